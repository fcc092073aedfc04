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
