"""Makes a v1 torrent with python3-libtorrent, for piece sizes `shoal create`
does not make (it keeps mktorrent's range, 32 KiB to 256 MiB).

  lt_create.py FILE PIECE_BYTES ANNOUNCE OUT

One file, v1 only (no v2 hashes), no creation date or creator.
"""

import os
import sys

import libtorrent as lt

path, piece, announce, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fs = lt.file_storage()
lt.add_files(fs, path)
ct = lt.create_torrent(fs, piece, lt.create_torrent.v1_only)
ct.add_tracker(announce)
lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(path)))
with open(out, "wb") as f:
    f.write(lt.bencode(ct.generate()))
print(f"{out}: {ct.num_pieces()} pieces of {piece} bytes")
