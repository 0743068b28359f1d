"""What a seed's link carried, message by message (bench/wan.sh CAPTURE=1).

  seedcap.py DEV PORT OUT.json     (as root, inside the seed's namespace)

Captures every TCP segment on DEV (an AF_PACKET socket: no tcpdump needed)
until SIGINT/SIGTERM, reassembles each connection's byte stream in both
directions, and parses the peer wire protocol (the handshake, then
length-prefixed messages) of the connections to or from the seed's peer
PORT (not the tracker's). Says "capturing" on stdout once it is. Writes
OUT.json with:

  blocks_sent, distinct_blocks   piece messages the seed sent; different
                                 (index, offset) among them
  dup_blocks                     sends of a block sent before, split by
                                 whether, when that block was requested
                                 again, the first receiver had already
                                 announced the piece (have): "dup_after_have"
                                 (the asker could have got it from a peer)
                                 or not: "dup_concurrent" (nobody but the
                                 seed had it yet)
  bins                           per BIN seconds from the first request:
                                 payload sent, of it duplicates, requests
                                 received, haves sent (offers, when
                                 initial seeding), the most and the fewest
                                 requests outstanding at the seed, chokes
                                 and unchokes sent
  broken_flows                   connections whose capture had a gap (their
                                 remaining messages are not counted)
  one_copy_out_s                 when every piece had left the seed once
  last_pieces*                   the last pieces to leave once (1/16 of
                                 them, at least 8): from when, to how many
                                 peers, and the most to one peer
"""

import json
import signal
import socket
import struct
import sys
import time
from collections import defaultdict

dev, seed_port, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
BIN = 1.0
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4

sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.bind((dev, 0))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
sock.settimeout(0.2)
stop = False


def on_signal(*_):
    global stop
    stop = True


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)

t_first = None
sent = defaultdict(list)         # (index, offset) -> [(t, flow)]
requested = defaultdict(list)    # (index, offset) -> [(t, flow)]
have_at = {}                     # (flow, index) -> t the peer on flow announced index
dup_after_have = dup_concurrent = dup_same_peer = 0
bins = defaultdict(lambda: {"sent": 0, "dup": 0, "requests": 0, "offers": 0, "chokes": 0,
                            "unchokes": 0, "outstanding_max": 0, "outstanding_min": None})
outstanding = 0
broken = set()


class Flow:
    """One direction of one connection: its byte stream, parsed as it
    comes (a piece message's body is skipped, not kept)."""

    def __init__(self, key, outgoing):
        self.key, self.outgoing = key, outgoing
        self.next = None
        self.buf = b""
        self.skip = 0
        self.ahead = {}
        self.handshaken = False

    def segment(self, seq, flags, payload, t):
        if flags & 0x02:  # SYN
            self.next = (seq + 1) & 0xFFFFFFFF
            return
        if self.next is None or self.key in broken or not payload:
            return
        # Segments after a gap (a packet the queue dropped, resent later)
        # wait in `ahead` until the gap is filled.
        self.ahead[seq] = payload
        if len(self.ahead) > 4096:
            broken.add(self.key)
            return
        progress = True
        while progress:
            progress = False
            for start in list(self.ahead):
                data = self.ahead[start]
                d = (start - self.next) & 0xFFFFFFFF
                if d >= 0x80000000:  # starts before what we have
                    cut = (self.next - start) & 0xFFFFFFFF
                    del self.ahead[start]
                    if cut >= len(data):
                        continue
                    data = data[cut:]
                elif d > 0:
                    continue
                else:
                    del self.ahead[start]
                self.take(data, t)
                progress = True

    def take(self, payload, t):
        self.next = (self.next + len(payload)) & 0xFFFFFFFF
        if self.skip:
            k = min(self.skip, len(payload))
            payload, self.skip = payload[k:], self.skip - k
        self.buf += payload
        self.parse(t)

    def parse(self, t):
        b, pos = self.buf, 0
        if not self.handshaken:
            if len(b) < 68:
                return
            pos, self.handshaken = 68, True
        while len(b) - pos >= 4:
            (n,) = struct.unpack_from(">I", b, pos)
            have = len(b) - pos - 4
            if n and have < min(n, 13):
                break
            if n:
                self.message(b[pos + 4], b, pos + 5, n - 1, t)
            if have < n:  # the rest of a long message: skip it as it comes
                self.skip = n - have
                pos = len(b)
                break
            pos += 4 + n
        self.buf = b[pos:]

    def message(self, mid, b, at, n, t):
        global outstanding, dup_after_have, dup_concurrent, dup_same_peer, t_first
        bn = bins[int((t - (t_first or t)) / BIN)] if t_first is not None else None
        if self.outgoing:
            if mid == 7 and n >= 8:  # piece
                index, offset = struct.unpack_from(">II", b, at)
                key = (index, offset)
                before = list(sent[key])
                sent[key].append((t, self.key))
                outstanding = max(0, outstanding - 1)
                if bn is not None:
                    bn["sent"] += n - 8
                    if before:
                        bn["dup"] += n - 8
                if before:
                    first_flow = before[0][1]
                    if any(f == self.key for _, f in before):
                        dup_same_peer += 1
                    asked = [r for r, f in requested[key] if f == self.key]
                    asked_at = asked[-1] if asked else t
                    had = have_at.get((first_flow, index))
                    if had is not None and had <= asked_at:
                        dup_after_have += 1
                    else:
                        dup_concurrent += 1
            elif mid == 4 and n >= 4 and bn is not None:
                bn["offers"] += 1
            elif mid == 16 and n >= 12:  # reject_request
                outstanding = max(0, outstanding - 1)
            elif mid == 0 and bn is not None:
                bn["chokes"] += 1
            elif mid == 1 and bn is not None:
                bn["unchokes"] += 1
        else:
            peer_flow = (self.key[2], self.key[3], self.key[0], self.key[1])
            if mid == 6 and n >= 12:  # request
                if t_first is None:
                    t_first = t
                    bn = bins[0]
                index, offset = struct.unpack_from(">II", b, at)
                requested[(index, offset)].append((t, peer_flow))
                outstanding += 1
                bn["requests"] += 1
            elif mid == 8 and n >= 12:  # cancel
                outstanding = max(0, outstanding - 1)
            elif mid == 4 and n >= 4:
                (index,) = struct.unpack_from(">I", b, at)
                have_at.setdefault((peer_flow, index), t)
        if bn is not None:
            bn["outstanding_max"] = max(bn["outstanding_max"], outstanding)
            m = bn["outstanding_min"]
            bn["outstanding_min"] = outstanding if m is None else min(m, outstanding)


flows = {}
print("capturing", flush=True)
while not stop:
    try:
        frame, addr = sock.recvfrom(1 << 17)
    except socket.timeout:
        continue
    except InterruptedError:
        continue
    t = time.monotonic()
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6:
        continue
    total = struct.unpack_from(">H", ip, 2)[0] or len(ip)  # 0 with GSO
    tcp = ip[ihl:total if total >= ihl + 20 else len(ip)]
    sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
    off = (tcp[12] >> 4) * 4
    flags = tcp[13]
    payload = tcp[off:]
    if seed_port not in (sport, dport):
        continue
    key = (ip[12:16], sport, ip[16:20], dport)
    outgoing = addr[2] == PACKET_OUTGOING
    flow = flows.get(key)
    if flow is None:
        flow = flows[key] = Flow(key, outgoing)
    flow.segment(seq, flags, payload, t)

blocks = sum(len(v) for v in sent.values())
# When each piece had left the seed once (its last block's first send), and
# to whom: the pieces that leave last decide how long the swarm's tail is.
first_out = {}
for (index, _), sends in sent.items():
    t, flow = sends[0]
    if index not in first_out or t > first_out[index][0]:
        first_out[index] = (t, flow)
last = sorted(first_out.values())[-max(8, len(first_out) // 16):]
last_to = defaultdict(int)
for _, flow in last:
    last_to[flow] += 1
res = {
    "one_copy_out_s": round(last[-1][0] - t_first, 2) if last and t_first else None,
    "last_pieces": len(last),
    "last_pieces_peers": len(last_to),
    "last_pieces_most_to_one": max(last_to.values(), default=0),
    "last_pieces_from_s": round(last[0][0] - t_first, 2) if last and t_first else None,
    "blocks_sent": blocks,
    "distinct_blocks": len(sent),
    "dup_blocks": blocks - len(sent),
    "dup_after_have": dup_after_have,
    "dup_concurrent": dup_concurrent,
    "dup_same_peer": dup_same_peer,
    "broken_flows": len(broken),
    "flows": len(flows),
    # Every bin up to the last, the quiet ones too.
    "bins": [dict(bins[i], t=i * BIN) for i in range(max(bins) + 1 if bins else 0)],
}
with open(out_path, "w") as f:
    json.dump(res, f)
