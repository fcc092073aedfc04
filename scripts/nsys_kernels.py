"""Kernel time inside a window of an nsys capture (sqlite export): per kernel name, total,
count and mean, and the window's busy and idle time. The window runs from the first to the last
kernel whose name holds PATTERN (default bf16: a bf16 sweep in `eigenprune bench --dtype f32`,
where nothing else runs bf16).

    python3 scripts/nsys_kernels.py FILE.sqlite [PATTERN]
"""
import sqlite3, sys, collections
db = sqlite3.connect(sys.argv[1])
pat = sys.argv[2] if len(sys.argv) > 2 else "bf16"
names = dict(db.execute("select id, value from StringIds"))
rows = db.execute("select start, end, demangledName, shortName from CUPTI_ACTIVITY_KIND_KERNEL order by start").fetchall()
rows = [(s, e, names.get(d, "?"), names.get(sn, "?")) for s, e, d, sn in rows]
hit = [i for i, r in enumerate(rows) if pat in r[2] or pat in r[3]]
if not hit:
    print("no kernel matches", pat); sys.exit()
w = rows[hit[0]:hit[-1] + 1]
span = (w[-1][1] - w[0][0]) / 1e9
busy = sum(e - s for s, e, _, _ in w) / 1e9
print(f"window {span:.3f} s, {len(w)} kernels, busy {busy:.3f} s, idle {span - busy:.3f} s")
by = collections.defaultdict(lambda: [0, 0.0])
for s, e, d, sn in w:
    key = sn if len(sn) < 90 else sn[:90]
    by[key][0] += 1
    by[key][1] += (e - s) / 1e9
for k, (n, t) in sorted(by.items(), key=lambda x: -x[1][1])[:45]:
    print(f"{t:8.4f} s {n:7d} x {t / n * 1e6:8.1f} us  {k}")
# memcpy / memset in the window
for table in ("CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"):
    try:
        r = db.execute(f"select count(*), sum(end-start), sum(bytes) from {table} where start >= ? and end <= ?", (w[0][0], w[-1][1])).fetchone()
        print(table, r)
    except Exception as ex:
        print(table, ex)
# memcpy by direction (1: host to device, 2: device to host, 8: device to device)
try:
    for kind, n, t, b in db.execute("select copyKind, count(*), sum(end-start), sum(bytes) from CUPTI_ACTIVITY_KIND_MEMCPY "
                                    "where start >= ? and end <= ? group by copyKind", (w[0][0], w[-1][1])):
        print(f"memcpy kind {kind}: {n} copies, {t / 1e9:.4f} s, {b} bytes")
except Exception as ex:
    print("memcpy kinds:", ex)
# host-side CUDA API calls in the window: what the host spent its time on between kernels
try:
    api = db.execute("select nameId, count(*), sum(end-start) from CUPTI_ACTIVITY_KIND_RUNTIME "
                     "where start >= ? and end <= ? group by nameId order by sum(end-start) desc limit 15",
                     (w[0][0], w[-1][1])).fetchall()
    for name, n, t in api:
        print(f"api {t / 1e9:8.4f} s {n:7d} x {t / n / 1e3:8.1f} us  {names.get(name, name)}")
except Exception as ex:
    print("api:", ex)
# the longest idle gaps between consecutive kernels, and the kernel after each
gaps = sorted(((w[i + 1][0] - w[i][1], i) for i in range(len(w) - 1)), reverse=True)[:10]
idle_over_100us = sum(g for g, _ in ((w[i + 1][0] - w[i][1], i) for i in range(len(w) - 1)) if g > 100_000)
print(f"idle in gaps over 100 us: {idle_over_100us / 1e9:.4f} s")
for g, i in gaps:
    print(f"gap {g / 1e3:9.1f} us before {w[i + 1][3][:60]} (after {w[i][3][:40]})")
