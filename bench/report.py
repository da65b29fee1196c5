"""Rendering of results: latest.json, latest.md (tables) and ratios.png."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .common import METRICS

DOCS_START = "<!-- bench-results:start -->"
DOCS_END = "<!-- bench-results:end -->"


def ratio(name, value, ray_value):
    """How many times better than Ray (>1 = better), or None."""
    if value is None or ray_value is None:
        return None
    meta = METRICS[name]
    floor = meta.get("floor", 0.0) or 0.0
    v, r = max(value, floor), max(ray_value, floor)
    if meta["better"] == "higher":
        return v / r if r > 0 else None
    return r / v if v > 0 else None


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    if a == 0:
        return "0"
    return f"{v:.2g}"


def fmt_ratio(r):
    if r is None:
        return "–"
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


# (runtime metric, limit metric, how the limit bounds it)
BOUNDS = [
    ("init_first_s", "spawn_python_numpy_s", "time",
     "a worker is a fresh Python that imports numpy"),
    ("tasks_sync_per_s", "pipe_rtt_us", "rate_rtt",
     "a sync task needs at least one process round trip"),
    ("actor_sync_1to1_per_s", "pipe_rtt_us", "rate_rtt",
     "a sync actor call needs at least one process round trip"),
    ("put_1gib_first_gbps", "memcpy_fresh_2t_gbps", "same",
     "one copy into fresh shared memory, 2 threads"),
    ("put_1gib_first_gbps", "memcpy_prefaulted_2t_gbps", "same",
     "one copy into shared memory pre-faulted ahead, 2 threads"),
    ("put_1gib_repeat_gbps", "memcpy_prefaulted_2t_gbps", "same",
     "one copy into pre-faulted shared memory, 2 threads"),
    ("transfer_1gib_gbps", "tcp_loopback_sendall_median_gbps", "same",
     "one TCP stream over loopback between two processes, sendall -> recv_into, median"),
    ("arg200_ref_s", "memcpy_fresh_2t_gbps", "time_copy200",
     "one 200 MB copy into fresh shared memory (the put); reads are zero-copy"),
]


def _limit_value(kind, lim):
    """The limit expressed in the runtime metric's unit."""
    if kind == "time" or kind == "same":
        return lim
    if kind == "rate_rtt":
        return 1e6 / lim
    if kind == "time_copy200":
        return 200e6 / (lim * 1e9)
    return None


def _pct_of_limit(name, value, limit):
    if value is None or limit is None or value <= 0:
        return None
    if METRICS[name]["better"] == "higher":
        return 100.0 * value / limit
    return 100.0 * limit / value


def _sel(v):
    """'always [madvise] never' -> 'madvise'."""
    if not v or "[" not in v:
        return v
    return v[v.index("[") + 1:v.index("]")]


def markdown(data, heading=True):
    meta = data["meta"]
    mets = data["metrics"]
    skipped = meta.get("skipped_backends", {})
    L = []
    if heading:
        L.append("# miniray benchmark results\n")
    L.append(f"- date: {meta.get('date')}; {meta.get('reps')} repetitions per backend "
             f"({'--quick' if meta.get('quick') else 'full'}), medians; "
             f"suite wall time {meta.get('elapsed_s', 0):.0f} s")
    L.append(f"- machine: {meta.get('cpu_model')}, {meta.get('cpus_logical')} CPUs, "
             f"{meta.get('ram_gib')} GiB RAM, /dev/shm {meta.get('dev_shm_gib')} GiB, "
             f"Linux {meta.get('kernel')}, Python {meta.get('python')}, numpy {meta.get('numpy')}; "
             f"THP {_sel(meta.get('thp_enabled'))}, shmem THP {_sel(meta.get('thp_shmem_enabled'))}, "
             f"nr_hugepages {meta.get('nr_hugepages')}")
    vers = meta.get("versions", {})
    L.append(f"- ray {vers.get('ray', 'n/a')}, miniray {vers.get('miniray', 'n/a')}; "
             f"init kwargs: ray {meta.get('init_kwargs', {}).get('ray')}, "
             f"miniray {meta.get('init_kwargs', {}).get('miniray')}")
    for b, why in skipped.items():
        L.append(f"- **{b} skipped**: {why}")
    if "miniray" not in meta.get("backends", []):
        L.append("- miniray: not in this run's --backends (pending)")
    L.append("- ratio = how many times better miniray is than Ray (>1 = miniray better: "
             "miniray/Ray for rates, Ray/miniray for times and memory)")
    L.append("")
    L.append("| metric | unit | miniray | ray | mp | miniray vs ray | target | pass |")
    L.append("|---|---|---:|---:|---:|---:|---|---|")
    mini_pending = "miniray" in skipped or "miniray" not in meta.get("active_backends", [])
    for name, m in METRICS.items():
        if m["bench"] == "limits" or name not in mets:
            continue
        e = mets[name]
        med = e["median"]
        if "miniray" in med:
            mini = fmt(med["miniray"])
        else:
            mini = "pending" if mini_pending and "ray" in med else "–"
        r = e.get("ratio", {}).get("miniray")
        rtxt = "pending" if (mini_pending and r is None and "ray" in med) else fmt_ratio(r)
        if e.get("pass") is None:
            ptxt = "pending" if (m["target"] is not None and mini_pending) else "–"
        else:
            ptxt = "pass" if e["pass"] else "**FAIL**"
        L.append(f"| {m['label']} | {m['unit']} | {mini} | {fmt(med.get('ray'))} | "
                 f"{fmt(med.get('mp'))} | {rtxt} | {m['target_text'] or '–'} | {ptxt} |")
    lim_rows = [(n, m) for n, m in METRICS.items() if m["bench"] == "limits" and n in mets]
    if lim_rows:
        L.append("")
        L.append("Physical limits of this machine (same run):")
        L.append("")
        L.append("| limit | unit | median | best | samples |")
        L.append("|---|---|---:|---:|---|")
        for n, m in lim_rows:
            s = mets[n]["samples"].get("limits", [])
            best = mets[n].get("best", {}).get("limits")
            L.append(f"| {m['label']} | {m['unit']} | {fmt(mets[n]['median'].get('limits'))} | "
                     f"{fmt(best)} | {', '.join(fmt(x) for x in s)} |")
        rows = []
        for name, lim_name, kind, why in BOUNDS:
            if name not in mets or lim_name not in mets:
                continue
            lim = _limit_value(kind, mets[lim_name].get("best", {}).get("limits"))
            med = mets[name]["median"]
            cells = []
            for b in ("miniray", "ray"):
                p = _pct_of_limit(name, med.get(b), lim)
                cells.append("pending" if (b == "miniray" and mini_pending) else
                             ("–" if p is None else f"{p:.0f}%"))
            rows.append(f"| {METRICS[name]['label']} | {fmt(lim)} {METRICS[name]['unit']} "
                        f"({why}) | {cells[0]} | {cells[1]} |")
        if rows:
            L.append("")
            L.append("Against the limits (best limit sample; 100% = at the physical bound):")
            L.append("")
            L.append("| metric | bound | miniray | ray |")
            L.append("|---|---|---:|---:|")
            L.extend(rows)
    fails = [r for r in data.get("runs", []) if not r.get("ok")]
    if fails:
        L.append("")
        L.append("Failed runs:")
        L.append("")
        for r in fails:
            L.append(f"- {r['bench']} / {r['backend']} / rep {r['rep'] + 1}: {r.get('error')}")
    killed = [r for r in data.get("runs", []) if r.get("cleanup", {}).get("killed")]
    if killed:
        L.append("")
        L.append("Processes that outlived their benchmark and were ended by pid:")
        L.append("")
        for r in killed:
            L.append(f"- {r['bench']} / {r['backend']} / rep {r['rep'] + 1}: "
                     f"{', '.join(r['cleanup']['killed'])}")
    return "\n".join(L) + "\n"


def chart(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mets = data["metrics"]
    rows = [(n, m) for n, m in METRICS.items()
            if m["bench"] != "limits" and n in mets
            and any(v is not None for v in (mets[n].get("ratio") or {}).values())]
    fig_h = max(3.0, 0.38 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(10, fig_h))
    if not rows:
        ax.text(0.5, 0.5, "no ratios yet", ha="center", va="center")
        ax.axis("off")
    else:
        ys = list(range(len(rows)))[::-1]
        h = 0.38
        have_mini = any(mets[n]["ratio"].get("miniray") is not None for n, _ in rows)
        for y, (n, m) in zip(ys, rows):
            r = mets[n]["ratio"]
            if r.get("miniray") is not None:
                ax.barh(y + h / 2, r["miniray"], height=h, color="#2b8cbe",
                        label="miniray" if y == ys[0] or "miniray" not in
                        ax.get_legend_handles_labels()[1] else None)
            if r.get("mp") is not None:
                ax.barh(y - h / 2 if have_mini else y, r["mp"], height=h, color="#bdbdbd",
                        label="multiprocessing.Pool" if "multiprocessing.Pool" not in
                        ax.get_legend_handles_labels()[1] else None)
            if m["target"] is not None:
                ax.plot([m["target"]] * 2, [y - 0.45, y + 0.45], color="#d7301f", lw=2,
                        label="target" if "target" not in ax.get_legend_handles_labels()[1] else None)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yticks(ys)
        ax.set_yticklabels([m["label"] for _, m in rows], fontsize=8)
        ax.set_xlabel("times better than Ray (log scale; >1 = better than Ray)")
        title = "miniray and multiprocessing.Pool vs Ray, same machine, same run"
        if not have_mini:
            title += "\n(miniray pending)"
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def update_docs_file(md, root):
    doc = Path(root) / "docs" / "performance.md"
    if not doc.exists():
        return False
    text = doc.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        return False
    a = text.index(DOCS_START) + len(DOCS_START)
    b = text.index(DOCS_END)
    doc.write_text(text[:a] + "\n" + md + text[b:])
    return True


def write_all(data, out, update_docs=False, root=None):
    out = Path(out)
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, out / "latest.json")
    md = markdown(data)
    tmp = out / "latest.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out / "latest.md")
    try:
        tmp = out / "ratios.png.tmp"
        chart(data, tmp)
        os.replace(tmp, out / "ratios.png")
    except ImportError as e:  # matplotlib missing: tables still written
        print(f"[bench] no chart: {e}")
    if update_docs and root is not None:
        update_docs_file(markdown(data, heading=False), root)
