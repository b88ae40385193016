# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run by every scenario's verify (the base config's additional_files_or_dirs): molecule's own runs of the scenario
- prepare, check, converge, idempotence, side_effect - show none of the secrets the hosts hold at verify, nor the
sandbox inventory's S3 secret key, in their output. Their argv is not captured (exec_audit covers verify's runs)."""
from __future__ import annotations

from conftest import MOLECULE_RUNS_LOG, containers, held_secrets, leaks  # pylint: disable=import-error


def test_molecule_runs_of_the_scenario_show_no_secret():
    assert MOLECULE_RUNS_LOG, "ANSIBLE_LOG_PATH is not set for molecule's runs (.config/molecule/config.yml)"
    with open(MOLECULE_RUNS_LOG, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    # Not vacuous: the log holds the scenario's runs (a check, converge, idempotence and a check at least).
    assert text.count("PLAY RECAP") >= 4, text[-2000:]
    found = leaks(held_secrets(containers().values()), text, execs=[])
    assert not found, "in molecule's runs:\n" + "\n".join(found)
