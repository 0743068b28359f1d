# The info hashes aquatic_udp_load_test generates (SmallRng = Xoshiro256++
# seeded by PCG32 from a fixed u64, as rand 0.8 does; one next_u32() per byte).
import sys
M = (1 << 64) - 1
def rotl(x, k): return ((x << k) | (x >> (64 - k))) & M
def seed(state):
    # rand 0.8's SmallRng::seed_from_u64 is rand_core's default: PCG32
    # fills the 32 seed bytes, read as four little-endian u64s.
    b = bytearray()
    for _ in range(8):
        state = (state * 6364136223846793005 + 11634580027462260723) & M
        x = ((((state >> 18) ^ state) >> 27)) & 0xffffffff
        rot = state >> 59
        x = ((x >> rot) | (x << ((32 - rot) & 31))) & 0xffffffff
        b += x.to_bytes(4, "little")
    return [int.from_bytes(b[i:i + 8], "little") for i in range(0, 32, 8)]
def gen(n, st=0xc3aa8be617b3acce):
    s = seed(st)
    for _ in range(n):
        h = bytearray()
        for _ in range(20):
            r = (rotl((s[0] + s[3]) & M, 23) + s[0]) & M
            t = (s[1] << 17) & M
            s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45)
            h.append((r >> 32) & 0xff)
        yield h.hex()
for h in gen(int(sys.argv[1])):
    print(h)
