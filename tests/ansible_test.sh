#!/usr/bin/env bash
# Run ansible-test on a copy of this checkout placed where ansible-test needs it:
# .build/ansible-test/ansible_collections/runbooks/incident. Usage: tests/ansible_test.sh sanity [args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$root/.build/ansible-test/ansible_collections/runbooks/incident

# ansible-test bootstraps pip in its venvs with a get-pip script from ci-files.testing.ansible.com, which is not
# reachable here: a stand-in with the same interface uses ensurepip and PyPI instead.
standin=$HOME/.ansible/test/cache/get_pip_24_2.py
mkdir -p "$(dirname "$standin")"
cat > "$standin" <<'PY'
"""Offline stand-in for get-pip.py used by ansible-test: ensurepip, then pip install what was asked."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet"] + args, check=True)
PY

rm -rf "$tree"
mkdir -p "$tree"
# Tracked and new (not ignored) files: what a commit of this checkout would hold.
cd "$root"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
  if [ -e "$file" ]; then cp --parents -P -- "$file" "$tree"; fi
done
# Its own git repository: otherwise ansible-test asks the outer one, which ignores .build/ and lists nothing.
cd "$tree"
git init -q . && git add -A
exec ansible-test "$@" --venv --python 3.11 --color no
