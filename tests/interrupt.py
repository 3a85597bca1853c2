"""Interrupt a journaled sweep (robustness or energy) after a given number of attack runs."""
from epsim.robustness import journal as J


class Interrupted(Exception):
    """Raised in place of the attack run after the last one allowed."""


def stop_sweeps_after(monkeypatch, n_runs: int) -> list:
    """Make every :class:`~epsim.robustness.journal.SweepJournal` compute ``n_runs`` attack runs,
    then raise :class:`Interrupted`; returns the list the computed runs' keys are appended to.
    ``monkeypatch.undo()`` restores it."""
    computed, original = [], J.SweepJournal.run

    def run(self, key, idx, compute):
        def counted():
            if len(computed) == n_runs:
                raise Interrupted(key)
            computed.append(key)
            return compute()
        return original(self, key, idx, counted)

    monkeypatch.setattr(J.SweepJournal, "run", run)
    return computed
