#!/usr/bin/env python3
"""How long the log's gap-free readers wait on transactions they do not care about.

A reader on PostgreSQL reads only rows of transactions below the oldest one still running
(pg_snapshot_xmin); a commit becomes readable once every transaction that got its id before it
has ended. This samples, every ~3 ms for DURATION seconds, the current snapshot's xmin and xmax
and the backend holding xmin (its last statement and state), then prints:
- the visibility delay: for each sample, the time until xmin passed that sample's xmax, i.e.
  how long a commit made at that moment waits before a gap-free reader may see it (p50/p90/p99);
- who held xmin back, by statement, over the samples where something did.

    python3 bench/xmin_probe.py DURATION   (during a W3 run; psql on PATH, PostgreSQL at
                                            postgres://postgres@127.0.0.1:5432/postgres)
"""
import subprocess, time, sys, collections, bisect
dur=float(sys.argv[1])
q = """SELECT extract(epoch from clock_timestamp()), pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, coalesce((SELECT left(regexp_replace(query,'\\s+',' ','g'),60)||' ['||state||']' FROM pg_stat_activity WHERE backend_xid::text = pg_snapshot_xmin(s)::text LIMIT 1),'-') FROM pg_current_snapshot() s"""
p = subprocess.Popen(["psql","postgres://postgres@127.0.0.1:5432/postgres","-qAt","-F","|"],stdin=subprocess.PIPE,stdout=subprocess.PIPE,text=True,bufsize=1)
rows=[]
end=time.time()+dur
while time.time()<end:
    p.stdin.write(q+";\n"); p.stdin.flush()
    t,xmin,xmax,who=p.stdout.readline().strip().split('|',3)
    rows.append((float(t),int(xmin),int(xmax),who))
    time.sleep(0.003)
# delay for a commit at sample i: time until xmin passes xmax_i
xmins=[r[1] for r in rows]
delays=[]; blockers=collections.Counter()
for i,(t,xmin,xmax,who) in enumerate(rows):
    j=i
    while j<len(rows) and rows[j][1] < xmax: j+=1
    if j==len(rows): break
    delays.append((rows[j][0]-t)*1000)
for r in rows:
    if r[1] < r[2]: blockers[r[3][:75]]+=1
d=sorted(delays)
pc=lambda x: round(d[min(len(d)-1,int(len(d)*x))],1)
print("samples",len(rows),"visibility delay ms p50",pc(.5),"p90",pc(.9),"p99",pc(.99),"max",round(d[-1],1))
for k,c in blockers.most_common(15): print(c,k)
