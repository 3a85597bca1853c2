"""python -m epsim.gdu: deprecated name of ``python -m epsim.gradcheck`` (kept for one release).

Prints one warning line and runs :mod:`epsim.gradcheck` with the same arguments.
"""
import sys

from .gradcheck import build_parser, gradient_check, main, small_model  # noqa: F401  (old import names)

gdu_check = gradient_check

if __name__ == "__main__":
    from .cli import run

    print("warning: python -m epsim.gdu is deprecated; use python -m epsim.gradcheck", file=sys.stderr)
    sys.exit(run(main))
