"""Draw bench/results/*.json as one PNG (run by run.py in the tools virtualenv).

    python chart.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib  # type: ignore[import-not-found]  # in bench/.venvs/tools only

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found]

OURS_COLOR = "#1f77b4"
PEER_COLOR = "#9a9a9a"
REF_COLOR = "#2ca02c"
FLOOR_COLOR = "#c7c7c7"


def color(name):
    if name.startswith("wsgiproxy-"):
        return OURS_COLOR
    if name in ("nginx", "direct", "gunicorn-bare"):
        return REF_COLOR
    if name.startswith("floor-"):
        return FLOOR_COLOR
    return PEER_COLOR


def short(res, name):
    lab = res["subjects"].get(name, name)
    return (lab.replace("WSGIProxy WSGIProxyApp", "WSGIProxyApp")
               .replace("WSGIProxy proxy_exact_request", "proxy_exact_request")
               .replace("WSGIProxy2 HostProxy", "WSGIProxy2"))


def hbars(ax, res, items, title, xlabel, target=None, log=False, fmt="%.0f"):
    """items: [(name, summary-or-None, note)] drawn top to bottom."""
    names = [short(res, n) for n, _, _ in items]
    y = list(range(len(items)))[::-1]
    for yi, (name, s, note) in zip(y, items):
        if s and "median" in s:
            ax.barh(yi, s["median"], color=color(name),
                    xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                    capsize=2, error_kw={"elinewidth": 0.8})
            ax.text(s["max"], yi, "  " + fmt % s.get("label_value", s["median"]), va="center",
                    fontsize=7)
        else:
            ax.text(0.01, yi, "  " + (note or "n/a")[:48], va="center", fontsize=7,
                    color="#b00", transform=ax.get_yaxis_transform())
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if log:
        ax.set_xscale("log")
    if target is not None:
        ax.axvline(target, color="#d62728", linestyle="--", linewidth=0.8)
    ax.margins(x=0.25)


def err(e):
    if not e:
        return "n/a"
    return "failed: " + str(e.get("error", "n/a"))


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        res = json.load(f)
    panels = []
    if "cpu" in res:
        for wl, title in (("get1k", "CPU µs / request, GET 1 KB (in-process)"),
                          ("post1k", "CPU µs / request, POST 1 KB"),
                          ("get64k", "CPU µs / request, GET 64 KB")):
            items = [(n, e.get(wl), err(e.get(wl))) for n, e in res["cpu"].items()]
            panels.append((items, title, "µs (lower is better)", 60 if wl == "get1k" else None,
                           False, "%.0f"))
    if "rps" in res:
        items = [(n, s, err(s)) for n, s in res["rps"].items()]
        panels.append((items, "Requests/s, GET 1 KB, gunicorn gthread + wrk",
                       "req/s (higher is better)", None, False, "%.0f"))
    if "stream" in res:
        mib = res["meta"]["params"]["stream_bytes"] // (1 << 20)
        for d in ("download", "upload"):
            items = [(n, e.get(d, {}).get("mib_per_s"), err(e.get(d))) for n, e in res["stream"].items()]
            panels.append((items, "%s %d MiB: throughput" % (d.capitalize(), mib),
                           "MiB/s (higher is better)", None, False, "%.0f"))
            items = [(n, e.get(d, {}).get("rss_growth_mib"), err(e.get(d)))
                     for n, e in res["stream"].items()]
            panels.append((items, "%s %d MiB: proxy peak RSS growth" % (d.capitalize(), mib),
                           "MiB, log scale (lower is better)", 32, True, "%.1f"))
    if "ttfb" in res:
        items = [(n, e.get("ttfb_ms"), err(e)) for n, e in res["ttfb"].items()]
        panels.append((items, "Time to first byte of a slow response",
                       "ms, log scale (lower is better)", None, True, "%.1f"))
    if not panels:
        print("nothing to draw")
        return
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.1 * rows), squeeze=False)
    for ax, (items, title, xlabel, target, log, fmt) in zip(axes.flat, panels):
        if log:
            # log axes cannot show 0 or negative growth: clamp for drawing only
            fixed = []
            for n, s, note in items:
                if n == "direct" and "RSS" in title:
                    continue  # no proxy process: nothing to show
                if s and "median" in s:
                    s = dict(s, median=max(s["median"], 0.1), min=max(s["min"], 0.1),
                             max=max(s["max"], 0.1), label_value=s["median"])
                fixed.append((n, s, note))
            items = fixed
        hbars(ax, res, items, title, xlabel, target=target, log=log, fmt=fmt)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    meta = res["meta"]
    fig.suptitle("WSGIProxy vs peers — %s, %s cores (%s), Python %s; median of %d runs, "
                 "bars show min–max%s" % (meta["date"], meta["cores"], meta["cpu"], meta["python"],
                                          meta["params"]["runs"],
                                          " — QUICK MODE" if meta["quick"] else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
