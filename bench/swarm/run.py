"""One swarm run for bench/swarm.sh and bench/wan.sh: 1 seed + N leechers.

  run.py CONFIG SHOAL FILE WORKDIR LEECHERS TIMEOUT [TRACKER_INTERVAL]
         [--piece-log L] [--hosts HOSTS.json]

CONFIG: shoal | shoal-initial | lt | lt-super | mixed | mixed-initial.
mixed: a shoal seed, and every second leecher (l1, l3, ...) libtorrent, the
others shoal; mixed-initial: the same with the seed's --initial-seeding.
FILE is the source file (single-file torrent; the seed serves it in
place). WORKDIR is made fresh and removed at the end (unless KEEP=1 in the
environment). --piece-log: pieces of 2^L bytes (default 18: 256 KiB).

Without --hosts every process listens on 127.0.0.1 (loopback). With
--hosts (bench/wan.sh) each runs in its own network namespace through
`ip netns exec NS` and binds its own address; run.py itself must then run
in the namespace that reaches the tracker's address. HOSTS.json:
  {"tracker": {"ns": NS, "ip": IP},
   "seed": {"ns": NS, "ip": IP, "hub_dev": DEV, "up_mbit": U},
   "leechers": [{"ns": ..., "ip": ..., "hub_dev": ..., "up_mbit": ...}, ...]}
(at least LEECHERS of them; "dev": the host's end of its link, for
CAPTURE=1). hub_dev is the far end of the host's link, in
run.py's own namespace: its receive counter (/proc/net/dev) is what the
host sent, bytes on the wire with headers, sampled every 0.1 s while the
swarm runs for the link figures below.

Steps: a fresh `shoal tracker` (every peer, shoal or libtorrent, finds the
others through it); `shoal create -l 18` (256 KiB pieces); the seed (shoal
seed, or bench/swarm/lt_peer.py seed), which checks the data and announces
before anything is timed (we wait until the tracker lists one peer); then
all LEECHERS leechers are started at once (t0 = just before the first
one). A leecher is complete when it says "download complete" (shoal's
"shoal: download complete: ..." line on stderr; lt_peer.py prints it on libtorrent's torrent_finished_alert); every
leecher keeps seeding to the others until the last one completes.

Measured:
  last    seconds from t0 to the last leecher's completion (also first and
          median; "times" lists every leecher's, with its kind);
  seed_x  the seed's payload upload / size (from its JSON at the end);
  cpu     user+sys CPU seconds of every peer process, read from
          /proc/PID/stat when the last leecher completes: the leechers' whole
          lives (start-up included), the seed's since t0 (its data check is
          left out). The tracker's CPU is reported apart (not in cpu).
  links   (--hosts only) over [t0, last]: the share of its upload cap each
          host's link carried (seed_link_use, leechers_link_use: their mean,
          swarm_link_use: all hosts' bytes / all caps), seed_idle_s: the
          time the seed's link carried less than half its cap, and
          seed_copy_s: when the seed's link had carried as many bytes as
          the content (wire bytes: a little before its payload had);
          timeline: per second, MiB on the seed's link and on all
          leechers' links together.
  capture (--hosts and CAPTURE=1 in the environment) bench/wan/seedcap.py's
          count of the seed's link, message by message, from t0 to the
          last completion: blocks sent more than once, requests outstanding.
Then every process gets SIGINT, its JSON summary is read, and every
leecher's file is compared with FILE byte for byte (a mismatch fails the
run). Prints progress on stderr and one JSON result line on stdout.
"""

import argparse
import filecmp
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("config", choices=["shoal", "shoal-initial", "lt", "lt-super", "mixed",
                                   "mixed-initial"])
for a in ["shoal", "src", "work"]:
    ap.add_argument(a)
ap.add_argument("n", type=int)
ap.add_argument("timeout", type=float)
ap.add_argument("interval", nargs="?", default="")
ap.add_argument("--piece-log", default="18")
ap.add_argument("--hosts")
args = ap.parse_args()
config, shoal, src, work, n, timeout = (args.config, args.shoal, args.src, args.work, args.n,
                                        args.timeout)
interval = args.interval or None
HERE = os.path.dirname(os.path.abspath(__file__))
LTPY = "/usr/bin/python3"
HZ = os.sysconf("SC_CLK_TCK")
seed_lt = config.startswith("lt")
# Which leechers are libtorrent: all (lt*), every second one (mixed*), none.
leecher_lt = [seed_lt or (config.startswith("mixed") and i % 2 == 1) for i in range(n)]
initial = config in ("shoal-initial", "mixed-initial")
name = os.path.basename(src)
LOOPBACK = {"ns": None, "ip": "127.0.0.1"}
if args.hosts:
    with open(args.hosts) as f:
        hosts = json.load(f)
    if len(hosts["leechers"]) < n:
        sys.exit(f"{args.hosts} has {len(hosts['leechers'])} leecher hosts, {n} wanted")
else:
    hosts = {"tracker": LOOPBACK, "seed": LOOPBACK, "leechers": [LOOPBACK] * n}

procs = []  # every Popen we started, for cleanup


def log(*a):
    print(f"[{config}]", *a, file=sys.stderr, flush=True)


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if os.environ.get("KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)


def fail(msg):
    log("FAIL:", msg)
    print(json.dumps({"config": config, "ok": False, "error": msg}), flush=True)
    cleanup()
    sys.exit(1)


def on_signal(*_):
    cleanup()
    sys.exit(130)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def spawn(args, tag, host, lt=False):
    """Start a process on `host` (in its network namespace, if it has one:
    `ip netns exec` execs the program, so the PID is the program's) with
    stdout and stderr piped (read by Peer.feed)."""
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    # PEER_LOG: RUST_LOG for the shoal peers, e.g. "shoal::slots=debug".
    if not lt and tag != "tracker" and os.environ.get("PEER_LOG"):
        env["RUST_LOG"] = os.environ["PEER_LOG"]
    if lt:
        env["LT_LISTEN"] = f"{host['ip']}:0"
    if host["ns"]:
        args = ["ip", "netns", "exec", host["ns"]] + args
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    procs.append(p)
    return Peer(p, tag, host, lt)


class Peer:
    def __init__(self, p, tag, host, lt):
        self.p, self.tag, self.host, self.is_lt = p, tag, host, lt
        self.out = b""
        self.err = b""
        self.complete_at = None
        self.errlog = open(os.path.join(work, tag + ".err"), "wb")
        self.tx = []  # (time, bytes its host's link had carried), when sampled

    def feed(self, stream, data, now):
        if stream == "out":
            self.out += data
        else:
            self.err += data
            self.errlog.write(data)
            self.errlog.flush()
        if self.complete_at is None and b"download complete" in (self.out if self.is_lt else self.err):
            self.complete_at = now

    def cpu(self):
        """utime + stime in seconds (threads included)."""
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def summary(self):
        for line in reversed(self.out.decode(errors="replace").splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        return None


def sample_links(peers):
    """Appends (now, bytes received so far) of each peer's hub_dev, i.e.
    what its host has sent, to peer.tx."""
    rx = {}
    with open("/proc/net/dev") as f:
        for line in f:
            dev, _, rest = line.partition(":")
            if rest:
                rx[dev.strip()] = int(rest.split()[0])
    now = time.monotonic()
    for peer in peers:
        if peer.host["hub_dev"] not in rx:
            fail(f"no device {peer.host['hub_dev']} here: run run.py in the hub's namespace")
        peer.tx.append((now, rx[peer.host["hub_dev"]]))


sel = selectors.DefaultSelector()


def watch(peer):
    sel.register(peer.p.stdout, selectors.EVENT_READ, (peer, "out"))
    sel.register(peer.p.stderr, selectors.EVENT_READ, (peer, "err"))


def pump(t):
    """Read whatever the peers wrote, for up to t seconds."""
    for key, _ in sel.select(t):
        peer, stream = key.data
        data = os.read(key.fileobj.fileno(), 65536)
        if not data:
            sel.unregister(key.fileobj)
            continue
        peer.feed(stream, data, time.monotonic())


def wait_for(cond, secs, what, watch_peers=()):
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() > deadline:
            fail(f"timed out ({secs:.0f} s) waiting for {what}")
        for peer in watch_peers:
            if peer.p.poll() is not None:
                pump(0.2)
                fail(f"{peer.tag} exited ({peer.p.returncode}) while waiting for {what}: "
                     + peer.err.decode(errors="replace")[-2000:])
        pump(0.05)


shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)

# --- tracker and torrent ------------------------------------------------------------

targs = [shoal, "tracker", "--listen", f"{hosts['tracker']['ip']}:0"]
if interval:
    targs += ["--interval", interval]
tracker = spawn(targs, "tracker", hosts["tracker"])
watch(tracker)
# The tracker's "listening on ADDR; announce URL …", the seed's "seeding …,
# listening on ADDR" (a whole line: a read may end inside the port).
addr_re = re.compile(rb"listening on (\d+\.\d+\.\d+\.\d+:\d+)[;\s]")
wait_for(lambda: addr_re.search(tracker.err), 10, "the tracker", [tracker])
taddr = addr_re.search(tracker.err).group(1).decode()
torrent = os.path.join(work, "t.torrent")
subprocess.run([shoal, "create", src, "-o", torrent, "-a", f"http://{taddr}/announce", "-l",
                args.piece_log],
               check=True, stdout=subprocess.DEVNULL)


def tracker_peers():
    with urllib.request.urlopen(f"http://{taddr}/stats.json", timeout=5) as r:
        s = json.load(r)
    return s["seeders"], s["leechers"]


# --- seed ---------------------------------------------------------------------------

if seed_lt:
    sargs = [LTPY, os.path.join(HERE, "lt_peer.py"), "seed", torrent, os.path.dirname(src)]
    if config == "lt-super":
        sargs.append("super")
    seed = spawn(sargs, "seed", hosts["seed"], lt=True)
    watch(seed)
    wait_for(lambda: b"ready" in seed.out, 120, "the libtorrent seed", [seed])
else:
    # No -q: it would silence the "listening on" line too.
    sargs = [shoal, "seed", torrent, src, "--port", "0", "--bind", hosts["seed"]["ip"], "--json"]
    if initial:
        sargs.append("--initial-seeding")
    # SEED_ARGS: more options for a shoal seed, e.g. "--upload-slots 8".
    sargs += os.environ.get("SEED_ARGS", "").split()
    seed = spawn(sargs, "seed", hosts["seed"])
    watch(seed)
    wait_for(lambda: addr_re.search(seed.err), 120, "shoal seed", [seed])
wait_for(lambda: tracker_peers()[0] >= 1, 30, "the seed's announce", [seed])
cap = None
if args.hosts and os.environ.get("CAPTURE") == "1":
    if seed_lt:
        seed_port = re.search(rb"ready (\d+)", seed.out).group(1).decode()
    else:
        seed_port = addr_re.search(seed.err).group(1).decode().rsplit(":", 1)[1]
    cap = spawn([LTPY, os.path.join(HERE, "..", "wan", "seedcap.py"), hosts["seed"]["dev"],
                 seed_port, os.path.join(work, "capture.json")], "capture", hosts["seed"])
    watch(cap)
    wait_for(lambda: b"capturing" in cap.out, 10, "the capture", [cap])
seed_cpu0 = seed.cpu()
tracker_cpu0 = tracker.cpu()

# --- leechers -----------------------------------------------------------------------

sampling = bool(args.hosts)
leechers = []
if sampling:
    pre = [types.SimpleNamespace(host=hosts["leechers"][i], tx=[]) for i in range(n)]
    sample_links([seed] + pre)
t0 = time.monotonic()
for i in range(n):
    out = os.path.join(work, f"l{i}")
    os.makedirs(out)
    host = hosts["leechers"][i]
    if leecher_lt[i]:
        largs = [LTPY, os.path.join(HERE, "lt_peer.py"), "leech", torrent, out]
    else:
        # No -q: with stderr not a terminal shoal prints "shoal: download
        # complete: ..." on completion (plus a progress line every 10 s).
        largs = [shoal, "download", torrent, "-o", out, "--port", "0", "--bind", host["ip"],
                 "--json"]
        # LEECH_ARGS: more options for the shoal leechers.
        largs += os.environ.get("LEECH_ARGS", "").split()
    leechers.append(spawn(largs, f"l{i}", host, lt=leecher_lt[i]))
    watch(leechers[-1])
    if sampling:
        leechers[-1].tx = pre[i].tx
t_started = time.monotonic() - t0
log(f"{n} leechers started in {t_started:.2f} s")
next_sample = time.monotonic()


def progress():
    done = sum(1 for l in leechers if l.complete_at is not None)
    return done


next_report = t0 + 10
deadline = t0 + timeout
while progress() < n:
    now = time.monotonic()
    for peer in leechers + [seed]:
        if peer.p.poll() is not None:
            pump(0.2)
            fail(f"{peer.tag} exited ({peer.p.returncode}) before the swarm completed: "
                 + peer.err.decode(errors="replace")[-2000:])
    if now > deadline:
        missing = [l.tag for l in leechers if l.complete_at is None]
        fail(f"timed out after {timeout:.0f} s: {len(missing)} leecher(s) incomplete: {missing}")
    if now >= next_report:
        try:
            seeders, leeching = tracker_peers()
        except OSError:
            seeders = leeching = "?"
        log(f"{now - t0:5.1f} s: {progress()}/{n} leechers complete "
            f"(the tracker lists {seeders} seeders, {leeching} leechers)")
        next_report += 10
    if sampling and now >= next_sample:
        sample_links([seed] + leechers)
        next_sample = now + 0.1
    pump(0.1 if sampling else 0.25)
if sampling:
    sample_links([seed] + leechers)

t_last = max(l.complete_at for l in leechers) - t0
capture = None
if cap is not None:
    cap.p.send_signal(signal.SIGINT)
    wait_for(lambda: cap.p.poll() is not None, 60, "the capture to finish")
    with open(os.path.join(work, "capture.json")) as f:
        capture = json.load(f)


def link_figures():
    """Link use over [t0, t0 + t_last] from the sampled counters."""
    t_end = t0 + t_last

    def sent(peer, t):
        """Bytes its host sent from the last sample before t0 to t
        (linear between samples)."""
        (a0, b0), val = peer.tx[0], peer.tx[-1][1]
        for (a, b), (c, d) in zip(peer.tx, peer.tx[1:]):
            if c >= t:
                val = b + (d - b) * (t - a) / (c - a) if c > a else d
                break
        return val - b0

    def cap(peer):
        return peer.host["up_mbit"] * 1e6 / 8

    everyone = [seed] + leechers
    use = {p.tag: sent(p, t_end) / (cap(p) * t_last) for p in everyone}
    idle, copy_at = 0.0, None
    base = seed.tx[0][1]
    for (a0, b0), (a1, b1) in zip(seed.tx, seed.tx[1:]):
        lo, hi = max(a0, t0), min(a1, t_end)
        if hi > lo and a1 > a0 and (b1 - b0) / (a1 - a0) < cap(seed) / 2:
            idle += hi - lo
        if copy_at is None and b1 - base >= size_bytes:
            copy_at = a0 + (a1 - a0) * (size_bytes - (b0 - base)) / max(b1 - b0, 1) - t0
    lu = [use[l.tag] for l in leechers]
    # Per second: MiB the seed's link and all leechers' links carried.
    timeline = []
    for k in range(int(t_last) + 1):
        a, b = t0 + k, min(t0 + k + 1, t_end)
        timeline.append([round((sent(seed, b) - sent(seed, a)) / 2**20, 2),
                         round(sum(sent(l, b) - sent(l, a) for l in leechers) / 2**20, 2)])
    return {
        "seed_link_use": round(use["seed"], 3),
        "leechers_link_use": round(sum(lu) / len(lu), 3),
        "swarm_link_use": round(sum(sent(p, t_end) for p in everyone)
                                / (sum(cap(p) for p in everyone) * t_last), 3),
        "seed_idle_s": round(idle, 2),
        "seed_copy_s": None if copy_at is None else round(copy_at, 2),
        "timeline": timeline,
    }


size_bytes = os.path.getsize(src)
links = link_figures() if sampling else {}
if sampling and os.environ.get("DUMP_TX"):
    with open(os.environ["DUMP_TX"], "w") as f:
        json.dump({"t0": t0, "complete": {l.tag: l.complete_at - t0 for l in leechers},
                   "tx": {p.tag: p.tx for p in [seed] + leechers}}, f)
cpu_leech = sum(l.cpu() for l in leechers)
cpu_seed = seed.cpu() - seed_cpu0
cpu_tracker = tracker.cpu() - tracker_cpu0
times = sorted(l.complete_at - t0 for l in leechers)
log(f"all {n} complete: first {times[0]:.2f} s, median {times[n // 2]:.2f} s, last {t_last:.2f} s"
    + (f"; links: { {k: v for k, v in links.items() if k != 'timeline'} }" if links else ""))

# --- stop, collect, verify ------------------------------------------------------------

for peer in leechers + [seed]:
    peer.p.send_signal(signal.SIGINT)
peers = leechers + [seed]
stop_deadline = time.monotonic() + 60


def peer_pipes_open():
    return any(key.data[0] is not tracker for key in sel.get_map().values())


while any(p.p.poll() is None for p in peers) or peer_pipes_open():
    if time.monotonic() > stop_deadline:
        slow = [p.tag for p in peers if p.p.poll() is None]
        fail(f"peers did not exit within 60 s of SIGINT: {slow}")
    pump(0.1)
tracker.p.send_signal(signal.SIGINT)

bad_exit = [f"{p.tag}={p.p.returncode}" for p in leechers + [seed] if p.p.returncode not in (0, 130)]
ssum = seed.summary()
if ssum is None:
    fail(f"no JSON summary from the seed (exit status {seed.p.returncode}); stdout: "
         + seed.out.decode(errors="replace")[-500:] + "; stderr: "
         + seed.err.decode(errors="replace")[-1500:])
size = ssum["size"]
lsums = [l.summary() for l in leechers]
if any(s is None for s in lsums):
    fail("a leecher printed no JSON summary")

mismatch = []
for i, l in enumerate(leechers):
    got = os.path.join(work, f"l{i}", name)
    if not os.path.exists(got) or not filecmp.cmp(got, src, shallow=False):
        mismatch.append(l.tag)
if mismatch:
    fail(f"data differs from the source in {mismatch}")

# Anything noteworthy on the peers' stderr (shoal logs with tracing: WARN/ERROR).
noise = {}
for p in leechers + [seed]:
    for line in p.err.decode(errors="replace").splitlines():
        if re.search(r"\b(WARN|ERROR|error|panicked)\b", line) or line.startswith("lt:"):
            key = re.sub(r"^\S+Z\s+", "", line)  # drop the timestamp
            key = re.sub(r"\d+(\.\d+)*", "N", key)[:160]
            noise[key] = noise.get(key, 0) + 1

res = {
    "config": config,
    "ok": True,
    "leechers": n,
    "size": size,
    "last": round(t_last, 3),
    "first": round(times[0], 3),
    "median": round(times[n // 2], 3),
    "times": [[l.tag, "lt" if l.is_lt else "shoal", round(l.complete_at - t0, 3)] for l in leechers],
    "start_spread": round(t_started, 3),
    "seed_x": round(ssum["uploaded"] / size, 4),
    "leechers_up_x": round(sum(s["uploaded"] for s in lsums) / size, 4),
    "leechers_down_x": round(sum(s["downloaded"] for s in lsums) / size, 4),
    # Payload sent that no leecher counted as received: late blocks after a
    # cancel (endgame) or a choke, blocks counted as sent but lost with a
    # closed connection. Each client counts by its own rules.
    "waste_x": round((ssum["uploaded"] + sum(s["uploaded"] for s in lsums)
                      - sum(s["downloaded"] for s in lsums)) / size, 4),
    "cpu": round(cpu_leech + cpu_seed, 2),
    "cpu_seed": round(cpu_seed, 2),
    "cpu_leechers": round(cpu_leech, 2),
    "cpu_tracker": round(cpu_tracker, 3),
    "hash_fails": sum(s.get("hash_fails", 0) for s in lsums),
    "bad_exit": bad_exit,
    "stderr_notes": noise,
}
if seed_lt:
    res["super_seeding"] = ssum.get("super_seeding")
res.update(links)
if capture is not None:
    res["capture"] = capture
print(json.dumps(res), flush=True)
try:
    tracker.p.wait(10)
except subprocess.TimeoutExpired:
    pass
cleanup()
