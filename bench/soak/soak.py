#!/usr/bin/env python3
"""Soak: one `shoal seed` for DURATION seconds, with honest `shoal download`
leechers coming and going (LEECHERS at once, TOTAL in all at least) and
HOSTILE hostile peers of every kind issue #15 names, reconnecting as soon as
they are dropped. At the end: every honest download complete and identical,
the seed's RSS over time (flat or not), and nothing written outside the
directories given to shoal.

usage: soak.py SHOAL WORKDIR   (env: DURATION=1800 LEECHERS=4 TOTAL=40
                                HOSTILE=20 SIZE_MB=32)
"""
import hashlib, os, random, socket, struct, subprocess, sys, threading, time

SHOAL, WORK = sys.argv[1], sys.argv[2]
DURATION = int(os.environ.get("DURATION", "1800"))
AT_ONCE = int(os.environ.get("LEECHERS", "4"))
TOTAL = int(os.environ.get("TOTAL", "40"))
HOSTILE = int(os.environ.get("HOSTILE", "20"))
SIZE_MB = int(os.environ.get("SIZE_MB", "32"))

os.makedirs(f"{WORK}/seed", exist_ok=True)
data = f"{WORK}/seed/data.bin"
with open(data, "wb") as f:
    f.write(random.Random(1).randbytes(SIZE_MB << 20))
want = hashlib.sha1(open(data, "rb").read()).hexdigest()
subprocess.run([SHOAL, "create", data, "-l", "16", "-o", f"{WORK}/t.torrent"],
               check=True, stdout=subprocess.DEVNULL)
info = subprocess.run([SHOAL, "show", "--json", f"{WORK}/t.torrent"], check=True,
                      capture_output=True, text=True).stdout
import json
meta = json.loads(info)
info_hash = bytes.fromhex(meta["info_hash"])
pieces = meta["piece_count"]

seed_log = open(f"{WORK}/seed.log", "w")
seed = subprocess.Popen([SHOAL, "seed", f"{WORK}/t.torrent", data, "--port", "0"],
                        stderr=subprocess.PIPE, text=True)
port = None
for line in seed.stderr:
    seed_log.write(line)
    if "listening on" in line:
        port = int(line.split("listening on ")[1].split(";")[0].rsplit(":", 1)[1])
        break
if port is None:
    sys.exit("the seed never said where it listens")
threading.Thread(target=lambda: [seed_log.write(l) for l in seed.stderr], daemon=True).start()
SEED = ("127.0.0.1", port)

stop = threading.Event()
stats = {"hostile_conns": 0, "hostile_bytes": 0}
lock = threading.Lock()

def msg(id, payload=b""):
    return struct.pack(">IB", 1 + len(payload), id) + payload

def handshake(s, fast=False):
    reserved = bytearray(8)
    reserved[5] |= 0x10
    if fast:
        reserved[7] |= 0x04
    pid = b"-XX0001-" + os.urandom(6).hex().encode()
    s.sendall(b"\x13BitTorrent protocol" + bytes(reserved) + info_hash + pid)
    got = b""
    while len(got) < 68:
        c = s.recv(68 - len(got))
        if not c:
            raise EOFError
        got += c

def req(i):
    return msg(6, struct.pack(">III", i % pieces, 0, 16384))

# Each kind gets a connected socket (from its own 127.x address) and
# misbehaves until the seed drops it.
def silent(s):
    while s.recv(4096):
        pass

def idle(s):
    handshake(s)
    while not stop.is_set():
        s.sendall(b"\0\0\0\0")
        time.sleep(1)

def stall(s):  # asks for 500 blocks and never reads
    handshake(s, fast=True)
    s.sendall(msg(15) + msg(2) + b"".join(req(i) for i in range(500)))
    stop.wait(600)

def chokes(s):  # choke/unchoke/interested floods, never reading
    handshake(s)
    chunk = (msg(1) + msg(0) + msg(2) + msg(3)) * 4096
    while not stop.is_set():
        s.sendall(chunk)

def garbage(s):
    handshake(s)
    while not stop.is_set():
        s.sendall(os.urandom(4096))

def huge_length(s):
    handshake(s)
    s.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\x05" + b"\xff" * 1000)
    stop.wait(60)

def bad_requests(s):  # out of range, over the queue limit without fast
    handshake(s)
    s.sendall(msg(2) + msg(6, struct.pack(">III", pieces + 5, 0, 16384)))
    s.sendall(b"".join(req(i) for i in range(5000)))
    stop.wait(60)

def have_flood(s):
    handshake(s, fast=True)
    s.sendall(msg(15))
    while not stop.is_set():
        s.sendall(b"".join(msg(4, struct.pack(">I", random.randrange(pieces))) for _ in range(2000)))

def ext_junk(s):  # extended handshakes that are not bencode, or huge
    handshake(s)
    s.sendall(msg(20, b"\0" + b"d1:md" + b"9" * 100000))
    stop.wait(60)

def keepalive_flood(s):
    handshake(s)
    while not stop.is_set():
        s.sendall(b"\0\0\0\0" * 16384)

KINDS = [silent, idle, stall, chokes, garbage, huge_length, bad_requests, have_flood,
         ext_junk, keepalive_flood]
if os.environ.get("KINDS"):
    KINDS = [k for k in KINDS if k.__name__ in os.environ["KINDS"].split(",")]

def hostile(n):
    kind = KINDS[n % len(KINDS)]
    src = f"127.0.{2 + n // 200}.{1 + n % 200}"
    while not stop.is_set():
        try:
            s = socket.socket()
            s.bind((src, 0))
            s.settimeout(120)
            s.connect(SEED)
            with lock:
                stats["hostile_conns"] += 1
            kind(s)
        except Exception:
            pass
        finally:
            try:
                s.close()
            except Exception:
                pass
        stop.wait(0.5)

for n in range(HOSTILE):  # each from its own address
    threading.Thread(target=hostile, args=(n,), daemon=True).start()

def rss_kib(pid):
    try:
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    except OSError:
        return None

samples = []
def sample():
    while not stop.is_set():
        r = rss_kib(seed.pid)
        if r is not None:
            samples.append((time.time() - t0, r))
        stop.wait(10)

results = []
def leecher(n):
    out = f"{WORK}/leech{n}"
    started = time.time()
    p = subprocess.run([SHOAL, "download", f"{WORK}/t.torrent", "-o", out, "--port", "0",
                        "--no-trackers", "--peer", f"127.0.0.1:{port}", "-x", "-q",
                        "--no-peers-timeout", "5m"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.time() - started
    f = f"{out}/data.bin"
    same = os.path.exists(f) and hashlib.sha1(open(f, "rb").read()).hexdigest() == want
    with lock:
        results.append((n, p.returncode, same, took, p.stderr.strip()[-300:]))
    subprocess.run(["rm", "-rf", out])

t0 = time.time()
threading.Thread(target=sample, daemon=True).start()
running, started_n = [], 0
while time.time() - t0 < DURATION or started_n < TOTAL:
    running = [t for t in running if t.is_alive()]
    if len(running) < AT_ONCE and (time.time() - t0 < DURATION or started_n < TOTAL):
        t = threading.Thread(target=leecher, args=(started_n,))
        t.start()
        running.append(t)
        started_n += 1
        # Spread the arrivals so leechers come and go over the whole run.
        time.sleep(max(0.5, DURATION / max(TOTAL, 1) / AT_ONCE))
    else:
        time.sleep(0.5)
for t in running:
    t.join()
stop.set()
alive = seed.poll() is None
seed.terminate()
try:
    seed.wait(20)
except subprocess.TimeoutExpired:
    seed.kill()

ok = [r for r in results if r[1] == 0 and r[2]]
print(f"soak: {time.time() - t0:.0f} s, seed {'alive' if alive else 'DIED'} to the end")
print(f"honest leechers: {len(ok)} of {len(results)} complete and identical; "
      f"time each: min {min(r[3] for r in results):.1f} s, max {max(r[3] for r in results):.1f} s")
for r in results:
    if not (r[1] == 0 and r[2]):
        print(f"  leecher {r[0]} FAILED: exit {r[1]}, identical {r[2]}: {r[4]}")
print(f"hostile peers: {HOSTILE} of {len(KINDS)} kinds ({', '.join(k.__name__ for k in KINDS)}), {stats['hostile_conns']} connections made")
if samples:
    rs = [r for _, r in samples]
    first = [r for t, r in samples if t < DURATION / 6] or rs
    last = [r for t, r in samples if t > DURATION * 5 / 6] or rs
    print(f"seed RSS: min {min(rs) / 1024:.1f} MiB, max {max(rs) / 1024:.1f} MiB; "
          f"first sixth avg {sum(first) / len(first) / 1024:.1f} MiB, "
          f"last sixth avg {sum(last) / len(last) / 1024:.1f} MiB ({len(rs)} samples)")
# Nothing but what we made: the seed's data, the torrent, the log, no
# leftover leecher directories.
extra = sorted(set(os.listdir(WORK)) - {"seed", "t.torrent", "seed.log"})
seed_files = sorted(os.listdir(f"{WORK}/seed"))
outside = extra + [f for f in seed_files if f != "data.bin"]
intact = hashlib.sha1(open(data, "rb").read()).hexdigest() == want
print(f"written outside the output directories: {outside or 'nothing'}; seed data intact: {intact}")
sys.exit(0 if alive and len(ok) == len(results) >= TOTAL and not outside and intact else 1)
