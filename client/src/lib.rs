//! The swarm client engine (`shoal download` / `shoal seed`). Filled in by the client issue; see ARCHITECTURE.md.
