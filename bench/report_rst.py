#!/usr/bin/env python3
"""Print the tables of a results JSON as reStructuredText list-tables, for
docs/benchmarks.rst (stdlib only).

    python3 bench/report_rst.py [bench/results/latest.json]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def fmt(s, spec="%.0f"):
    if not s or "median" not in s:
        return None
    return (spec + " (" + spec + "–" + spec + ")") % (s["median"], s["min"], s["max"])


def failed(e):
    msg = (e or {}).get("error") if isinstance(e, dict) else e
    if not msg:
        return "n/a"
    msg = str(msg).replace("*", "\\*").replace("`", "'")
    return "failed: " + (msg if len(msg) < 90 else msg[:87] + "...")


def esc(text):
    return str(text).replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def list_table(title, header, rows, widths=None):
    out = [".. list-table:: %s" % title, "   :header-rows: 1"]
    if widths:
        out.append("   :widths: %s" % " ".join(str(w) for w in widths))
    out.append("")
    for row in [header] + rows:
        first = True
        for cell in row:
            out.append("   %s %s" % ("* -" if first else "  -", cell if cell != "" else "\\ "))
            first = False
    out.append("")
    return "\n".join(out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results", "latest.json")
    with open(path) as f:
        res = json.load(f)
    lab = {k: esc(v) for k, v in res["subjects"].items()}
    lab.setdefault("direct", "direct to backend (no proxy)")
    lab.setdefault("nginx", "nginx proxy_pass")
    out = []
    if "cpu" in res:
        rows = []
        for name, entry in res["cpu"].items():
            row = [lab.get(name, name)]
            for wl in ("get1k", "post1k", "get64k"):
                s = entry.get(wl, {})
                v = fmt(s)
                row.append(v if v else failed(s))
                row.append("%.2f" % s["ratio_to_paste"] if "ratio_to_paste" in s else "")
            s = entry.get("get1k", {})
            row.append("%.0f / %.0f" % (s["user_us_median"], s["sys_us_median"])
                       if "user_us_median" in s else "")
            rows.append(row)
        out.append(list_table("CPU µs per proxied request (in-process)",
                              ["subject", "GET 1 KB", "× paste", "POST 1 KB", "× paste",
                               "GET 64 KB", "× paste", "GET 1 KB user / sys"], rows))
    if "rps" in res:
        peers = [p for p in ("paste", "wsgiproxy2-httplib", "wsgiproxy2-urllib3", "werkzeug")
                 if "median" in res["rps"].get(p, {})]
        rows = []
        for name, s in res["rps"].items():
            v = fmt(s)
            if v:
                rows.append([lab.get(name, name), v] + ["%.2f" % s["ratio_to"][p] for p in peers])
            else:
                rows.append([lab.get(name, name), failed(s)] + [""] * len(peers))
        out.append(list_table("Requests/s, GET 1 KB, gunicorn gthread (1 worker, 4 threads) + wrk",
                              ["subject", "req/s"] + ["× %s" % lab.get(p, p) for p in peers], rows))
    if "stream" in res:
        mib = res["meta"]["params"]["stream_bytes"] // MIB
        rows = []
        for name, entry in res["stream"].items():
            row = [lab.get(name, name)]
            for d in ("download", "upload"):
                e = entry.get(d, {})
                v = fmt(e.get("mib_per_s"))
                row.append(v if v else failed(e))
                row.append("%.0f%%" % (100 * e["ratio_to_nginx"]) if "ratio_to_nginx" in e else "")
                row.append(fmt(e.get("rss_growth_mib"), "%.1f") or "")
            rows.append(row)
        out.append(list_table("Streaming %d MiB: MiB/s and peak RSS growth of the proxy (MiB)" % mib,
                              ["subject", "download MiB/s", "% nginx", "download RSS +MiB",
                               "upload MiB/s", "% nginx", "upload RSS +MiB"], rows))
    if "ttfb" in res:
        rows = []
        for name, e in res["ttfb"].items():
            v = fmt(e.get("ttfb_ms"), "%.1f")
            rows.append([lab.get(name, name), v if v else failed(e), fmt(e.get("total_ms")) or ""])
        out.append(list_table("Time to first byte of a slow response (ms)",
                              ["subject", "first body byte", "whole response"], rows))
    if res.get("targets"):
        out.append("Targets:\n")
        for c in res["targets"]:
            mark = "met" if c["ok"] else ("**missed**" if c["ok"] is False else "not measured")
            out.append("- %s: %s — %s" % (esc(c["what"]), esc(c["value"]), mark))
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
