"""Render each adapter's layout and label mapping as Markdown for docs/datasets.md.

``python -m fundusfm.data.adapters.docs --write docs/datasets.md`` replaces the block between
the BEGIN/END GENERATED markers, so the documentation cannot drift from the mapping tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fundusfm.data.adapters import ADAPTERS, ALIASES, COMMON_OPTIONS
from fundusfm.data.vocab import LABELS

BEGIN = "<!-- BEGIN GENERATED: python -m fundusfm.data.adapters.docs --write docs/datasets.md -->"
END = "<!-- END GENERATED -->"


def _fmt_labels(labels) -> str:
    if not isinstance(labels, dict):
        return str(labels)
    parts = []
    for k, v in labels.items():
        if k == "note":
            continue
        parts.append(f"`{k}`=" + ("unknown" if v is None else f"`{v}`"))
    text = ", ".join(parts) if parts else "(no harmonised label)"
    if labels.get("note"):
        text += f" — {labels['note']}"
    return text


def _fmt_kind(opt) -> str:
    if not hasattr(opt, "kind"):
        return "untyped"
    if opt.kind == "choice":
        return "one of " + ", ".join(f"`{c}`" if c else "`''`" for c in opt.choices)
    return {"bool": "true/false", "path": "path", "str": "string", "sheet": "sheet name or index",
            "fraction": "number 0-1", "ids_or_path": "list of ids or a file"}.get(opt.kind, opt.kind.replace("_", " "))


def render_markdown() -> str:
    """The generated part of docs/datasets.md: vocabulary, then one section per adapter."""
    out = ["## Harmonised vocabulary", "", "| column | values | meaning |", "|---|---|---|"]
    for name, lab in LABELS.items():
        out.append(f"| `{name}` | {', '.join(str(v) for v in lab.values)} | {lab.description} |")
    out += ["", "## Options of every adapter", ""]
    out += [f"- `{k}` ({_fmt_kind(v)}): {v.doc}" for k, v in COMMON_OPTIONS.items()]
    aliases: dict[str, list[str]] = {}
    for a, target in ALIASES.items():
        aliases.setdefault(target, []).append(a)
    for name, ad in ADAPTERS.items():
        out += ["", f"## `{name}` — {ad.summary}", ""]
        if name in aliases:
            out.append(f"Aliases: {', '.join(f'`{a}`' for a in sorted(aliases[name]))}.  ")
        out.append(f"**Layout.** {ad.layout}")
        out.append("")
        out.append(f"Normal/abnormal from all-negative labels (exhaustive): **{'yes' if ad.exhaustive else 'no'}**."
                   + (f" Images whose path matches the regex `{ad.labelled_dirs}` but have no label are reported."
                      if ad.labelled_dirs else ""))
        if ad.options:
            out.append("")
            out += [f"- option `{k}` ({_fmt_kind(v)}): {getattr(v, 'doc', v)}" for k, v in ad.options.items()]
        out += ["", "| source label | harmonised |", "|---|---|"]
        for src, labels in ad.mapping.items():
            out.append(f"| `{src}` | {_fmt_labels(labels)} |")
    return "\n".join(out) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the generated block replaced (appended when the markers are absent)."""
    new = f"{BEGIN}\n{block}{END}"
    if BEGIN in text and END in text:
        return re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    return text.rstrip("\n") + "\n\n" + new + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", type=Path, help="update the generated block of this Markdown file")
    args = p.parse_args(argv)
    block = render_markdown()
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(replace_block(old, block))
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
