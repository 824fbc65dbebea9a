import json, re, sys, glob, statistics as S
OUT = sys.argv[1] if len(sys.argv) > 1 else 'results'
modes = ["epoll", "batch", "mshot", "mshot-poll", "mshot-sqpoll"]
cpu = {}
for l in open(f'{OUT}/cpu.txt'):
    tag, rest = l.split(' ', 1)
    cpu[tag] = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', rest))
def stats(tag):
    try: t = open(f'{OUT}/fwd.{tag}.txt').read()
    except FileNotFoundError: return {}
    m = re.search(r'STATS (.*)', t)
    return dict(re.findall(r'(\w+)=(\[[^\]]*\]|\S+)', m.group(1))) if m else {}
print("## UDP 64-byte frames (iperf3 -u -l 18 -b 0 -t 5)\n")
print("| mode | run | sent kpps | received kpps | loss % | forwarded kpps (fwd count) | fwd CPU % | fwd CPU ns/frame | syscalls/frame | TAP-A tx_dropped | UDP-B rcvbuf err | machine busy % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
summ = {}
for m in modes:
    for r in (1, 2, 3) if True else ():
        tag = f'udp.{m}.{r}'
        try: d = json.load(open(f'{OUT}/cli.{tag}.json'))['end']
        except Exception as e: continue
        rx = d['sum_received']; tx = d['sum_sent']
        sent = tx['packets'] / tx['seconds']; recv = (rx['packets'] - rx['lost_packets']) / rx['seconds']
        c = cpu.get(tag, {}); st = stats(tag)
        wall = float(c.get('wall', 5)); ticks = int(c.get('ticks', 0))
        cpup = ticks / wall  # ticks are 1/100 s -> percent
        fr = sum(int(x) for x in st.get('frames', '[0]').strip('[]').split(',')) if st else 0
        secs = float(st.get('secs', 1))
        fwdk = fr / 5.0 / 1e3   # nearly all frames come during the 5 s test
        nspf = ticks * 1e7 / max(fr, 1)
        s0 = [int(x) for x in c.get('sys0', '"0 1"').strip('"').split()]; s1 = [int(x) for x in c.get('sys1', '"0 1"').strip('"').split()]
        busy = 100 * (s1[0] - s0[0]) / max(1, (s1[1] - s0[1]))
        print(f"| {m} | {r} | {sent/1e3:.0f} | {recv/1e3:.1f} | {rx['lost_percent']:.1f} | {fwdk:.0f} | {cpup:.0f} | {nspf:.0f} | {float(st.get('syscalls_per_frame', 'nan')):.3f} | {c.get('tapA_txdrop')} | {c.get('udpB_rcvbuferr')} | {busy:.0f} |")
        summ.setdefault(m, []).append((recv, fwdk, cpup, nspf))
print("\n### medians\n")
print("| mode | received kpps (median, min-max) | forwarded kpps | fwd CPU % | ns CPU/frame |")
print("|---|---|---|---|---|")
for m, v in summ.items():
    med = lambda i: S.median(x[i] for x in v)
    print(f"| {m} | {med(0)/1e3:.1f} ({min(x[0] for x in v)/1e3:.1f}-{max(x[0] for x in v)/1e3:.1f}) | {med(1):.0f} | {med(2):.0f} | {med(3):.0f} |")
print("\n## ping -i 0.01 -c 300 (forwarder otherwise idle)\n")
print("| mode | avg us | p50 us | p99 us | max us | fwd CPU ticks (3 s) | syscalls/frame |")
print("|---|---|---|---|---|---|---|")
for m in modes:
    try: t = open(f'{OUT}/ping.{m}.txt').read()
    except FileNotFoundError: continue
    rtt = sorted(float(x) * 1000 for x in re.findall(r'time=([\d.]+) ms', t))
    if not rtt: continue
    p = lambda q: rtt[min(len(rtt) - 1, int(q * len(rtt)))]
    st = stats(f'ping.{m}')
    print(f"| {m} | {S.mean(rtt):.0f} | {p(0.5):.0f} | {p(0.99):.0f} | {rtt[-1]:.0f} | {cpu.get('ping.'+m, {}).get('ticks')} | {st.get('syscalls_per_frame')} |")
print("\n## TCP (iperf3 -t 5, TSO via TUNSETOFFLOAD, vnet header passed through)\n")
print("| mode | Gbit/s (receiver) | retransmits | fwd CPU % | frames forwarded | syscalls/frame |")
print("|---|---|---|---|---|---|")
for m in modes:
    try: d = json.load(open(f'{OUT}/cli.tcp.{m}.json'))['end']
    except Exception: continue
    c = cpu.get('tcp.' + m, {}); st = stats('tcp.' + m)
    print(f"| {m} | {d['sum_received']['bits_per_second']/1e9:.2f} | {d['sum_sent'].get('retransmits')} | {int(c.get('ticks',0))/float(c.get('wall',5)):.0f} | {st.get('frames')} | {st.get('syscalls_per_frame')} |")
print("\n## strace -c -f (3 s UDP flood under strace; strace slows everything)\n")
for m in modes:
    try: t = open(f'{OUT}/strace.{m}.strace').read()
    except FileNotFoundError: continue
    st = stats('strace.' + m)
    fr = sum(int(x) for x in st.get('frames', '[0]').strip('[]').split(',')) if st else 0
    rows = [l.split() for l in t.splitlines() if re.match(r'\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+', l)]
    calls = {r[-1]: int(r[3]) for r in rows}
    tot = sum(calls.values())
    print(f"- {m}: frames forwarded {fr}, syscalls {tot} ({tot/max(fr,1):.3f}/frame): " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda x: -x[1])[:5]))
