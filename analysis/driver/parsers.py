"""Tables printed by the CLIs whose output the driver keeps as text (``fidelity/*.txt``)."""
from __future__ import annotations

import re

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"


def parse_gdu(text: str) -> dict:
    """Rows of ``python -m epsim.gradcheck``'s table: layer, cosine, |EP|/|BPTT|; plus its header and verdict."""
    rows = []
    for line in text.splitlines():
        m = re.fullmatch(rf"\s*(conv\d+|fc)\s+({_NUM})\s+({_NUM})\s*", line)
        if m:
            rows.append({"layer": m.group(1), "cosine": float(m.group(2)), "norm_ratio": float(m.group(3))})
    head = next((ln for ln in text.splitlines() if ln.startswith("EP-CNN")), "")
    verdict = next((ln for ln in text.splitlines() if ln.startswith("min cosine")), "")
    return {"rows": rows, "setup": head, "verdict": verdict}


def parse_bench_spice(text: str) -> list:
    """Rows of ``benchmarks/bench_spice.py``'s table."""
    rows = []
    for line in text.splitlines():
        m = re.fullmatch(rf"\s*(\S+)\s+(\d+)\s+(\d+)\s+({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})x\s+({_NUM})\s*", line)
        if m:
            rows.append({"size": m.group(1), "elements": int(m.group(2)), "nodes": int(m.group(3)),
                         "ngspice_s": float(m.group(4)), "numba_s": float(m.group(5)), "mna_s": float(m.group(6)),
                         "ratio": float(m.group(7)), "agree_V": float(m.group(8))})
    return rows
