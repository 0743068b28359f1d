"""A private loopback DHT of LT libtorrent nodes and SH `shoal dht` nodes
(each on its own 127.N.0.1, as libtorrent needs); one libtorrent node
announces a torrent. Then, REPS interleaved rounds of: a fresh shoal node
(`shoal dht get-peers`, no saved table) and a fresh libtorrent session,
each told one random node of the network, timed from start to the first
peer. Last, a flood of find_node queries from one address at one shoal
node: bytes it sent back against bytes it received.

usage: dht_bench.py SHOAL LT SH REPS"""
import os, random, socket, statistics, subprocess, sys, time
import libtorrent as lt

shoal, n_lt, n_sh, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mask = lt.alert.category_t.dht_operation_notification | lt.alert.category_t.dht_notification

def lt_session(ip):
    return lt.session({"listen_interfaces": ip + ":0", "enable_dht": True, "enable_lsd": False,
                       "enable_upnp": False, "enable_natpmp": False, "dht_bootstrap_nodes": "",
                       "enable_outgoing_utp": False, "enable_incoming_utp": False,
                       "alert_mask": mask})

lts = []
for i in range(n_lt):
    ip = "127.%d.0.1" % (10 + i)
    lts.append((ip, lt_session(ip)))
time.sleep(0.5)
addrs = ["%s:%d" % (ip, s.listen_port()) for ip, s in lts]
for i, (_, s) in enumerate(lts):
    for j in random.sample(range(n_lt), min(8, n_lt)):
        if i != j:
            ip, port = addrs[j].split(":")
            s.add_dht_node((ip, int(port)))
shs = []
sh_addrs = []
for k in range(n_sh):
    ip = "127.%d.0.1" % (120 + k)
    p = subprocess.Popen([shoal, "dht", "--listen", ip + ":0", "--no-state", "--dht-bootstrap",
                          random.choice(addrs)], stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    sh_addrs.append(line.rsplit("on UDP ", 1)[1].strip())
    shs.append(p)
# libtorrent learns the shoal nodes too (routers never enter its table).
for _, s in lts:
    for a in random.sample(sh_addrs, min(3, len(sh_addrs))):
        ip, port = a.split(":")
        s.add_dht_node((ip, int(port)))
everyone = addrs + sh_addrs
print("network: %d libtorrent + %d shoal DHT nodes; settling 20 s" % (n_lt, n_sh), flush=True)
time.sleep(20)

h = lt.sha1_hash(os.urandom(20))
p = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + str(h))
p.save_path = "/tmp"
lts[0][1].add_torrent(p)
seed = addrs[0]
# Wait until another node's lookup sees the announce.
deadline = time.time() + 90
seen = False
while time.time() < deadline and not seen:
    lts[1][1].dht_get_peers(h)
    t = time.time()
    while time.time() - t < 3 and not seen:
        lts[1][1].wait_for_alert(200)
        for a in lts[1][1].pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert) and a.num_peers() > 0:
                seen = True
if not seen:
    sys.exit("the seed's announce never showed up")
print("announced; %d rounds" % reps, flush=True)

def time_shoal(entry, ip):
    start = time.monotonic()
    p = subprocess.Popen([shoal, "dht", "get-peers", str(h), "--dht-bootstrap", entry, "--listen",
                          ip + ":0", "--no-state", "--timeout", "30s", "-q"],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    took = time.monotonic() - start
    p.kill(); p.wait()
    return took if line.strip() else None

def time_lt(entry, ip):
    start = time.monotonic()
    s = lt_session(ip)
    e_ip, e_port = entry.split(":")
    s.add_dht_node((e_ip, int(e_port)))
    took = None
    last = 0
    while time.monotonic() - start < 30 and took is None:
        if time.monotonic() - last > 0.1:
            s.dht_get_peers(h)
            last = time.monotonic()
        s.wait_for_alert(50)
        for a in s.pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert) and a.num_peers() > 0:
                took = time.monotonic() - start
    del s
    return took

sh_t, lt_t = [], []
for r in range(reps):
    entry = random.choice(everyone)
    a = time_shoal(entry, "127.200.%d.1" % r)
    b = time_lt(entry, "127.201.%d.1" % r)
    print("round %d (entry %s): shoal %s, libtorrent %s" % (r + 1, entry,
          "%.3f s" % a if a else "none", "%.3f s" % b if b else "none"), flush=True)
    if a: sh_t.append(a)
    if b: lt_t.append(b)

# The flood: find_node from one address, as fast as we can send, 5 s.
target_ip, target_port = sh_addrs[0].split(":")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.250.0.1", 0))
sock.setblocking(False)
sent = got = 0
end = time.monotonic() + 5
i = 0
while time.monotonic() < end:
    q = b"d1:ad2:id20:" + os.urandom(20) + b"6:target20:" + os.urandom(20) + b"e1:q9:find_node1:t4:" + i.to_bytes(4, "big") + b"1:y1:qe"
    i += 1
    try:
        sock.sendto(q, (target_ip, int(target_port)))
        sent += len(q)
    except BlockingIOError:
        pass
    try:
        while True:
            got += len(sock.recv(4096))
    except BlockingIOError:
        pass
time.sleep(0.5)
try:
    while True:
        got += len(sock.recv(4096))
except BlockingIOError:
    pass
for p in shs:
    p.kill()

med = lambda v: statistics.median(v) if v else float("nan")
print("")
print("time to first peer, median of %d: shoal %.3f s (%d found), libtorrent %.3f s (%d found)"
      % (reps, med(sh_t), len(sh_t), med(lt_t), len(lt_t)))
ratio = med(sh_t) / med(lt_t) if sh_t and lt_t else float("nan")
print("ratio shoal/libtorrent: %.2f  %s (goal <= 1.0)" % (ratio, "PASS" if ratio <= 1.0 else "MISS"))
f = got / sent if sent else float("nan")
print("flood: %d queries (%d bytes) from one address; shoal answered %d bytes = %.3f x  %s (goal <= 3)"
      % (i, sent, got, f, "PASS" if f <= 3 else "MISS"))
