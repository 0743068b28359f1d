//! The HTTP tracker (`shoal tracker`). Filled in by the tracker issue; see ARCHITECTURE.md.
