# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `age` binary as a child process: recipients, identities, and a child fed and drained through pipes. PRIVATE
to the collection: no compatibility promise.

Encryption needs only a recipient (a public key, age1... or an SSH public key, or the absolute path of a
recipients file); an age PRIVATE key given as a recipient is refused without repeating it. Decryption needs an
identity file, which must be a regular file only its owner can read. A Child runs age (or any filter) with its
stdin fed by one thread and its stderr collected by another, so the caller can read its stdout as a stream
without a deadlock, and stop it when the reader fails. Secrets never reach argv: keys are files or public.

Pure standard library; no Ansible imports.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import threading

NO_IDENTITY = "no identity matched any of the recipients"
RECIPIENT_RE = re.compile(r"^(age1[0-9a-z]{58}|ssh-(ed25519|rsa) [A-Za-z0-9+/=]+( .*)?)$")
AGE1_RE = re.compile(r"^age1[0-9a-z]{58}$")


class AgeError(Exception):
    """What went wrong with age or its keys, in words for the operator."""


def age_binary():
    path = shutil.which("age")
    if path is None:
        raise AgeError("age is not installed on the host (no `age` on PATH)")
    return path


def recipient_args(recipient):
    """age arguments for a recipient: a public key (age1..., ssh-ed25519 ...) or the absolute path of a recipients file."""
    recipient = recipient.strip()
    if os.path.isabs(recipient):
        if not os.path.isfile(recipient):
            raise AgeError("recipients file %s does not exist or is not a regular file" % recipient)
        return ["-R", recipient]
    if recipient.upper().startswith("AGE-SECRET-KEY-"):
        raise AgeError("recipient is an age PRIVATE key: give its public key (age-keygen -y), which is all the host "
                       "needs to encrypt")
    if not RECIPIENT_RE.match(recipient):
        # The value is not repeated: whatever was passed by mistake stays out of the logs.
        raise AgeError("recipient is neither an age public key (age1...), an SSH public key nor the absolute path of "
                       "a recipients file")
    return ["-r", recipient]


def age1_key(recipient):
    """The recipient as written in the `recipient` metadata of an object: an age public key (age1...), else None
    (an SSH key or a recipients file, which are not recorded)."""
    recipient = recipient.strip()
    return recipient if AGE1_RE.match(recipient) else None


def keygen_binary():
    path = shutil.which("age-keygen")
    if path is None:
        raise AgeError("age-keygen is not installed on the host (no `age-keygen` on PATH)")
    return path


def public_keys(identity):
    """The age public keys of the identities in the file `identity` (age-keygen -y; the key is read by age-keygen
    from the file, never passed on a command line)."""
    check_identity(identity)
    res = subprocess.run([keygen_binary(), "-y", identity], capture_output=True, text=True, check=False)
    # age-keygen's error is not repeated: it could quote a line of the key file.
    if res.returncode != 0:
        raise AgeError("age-keygen -y cannot read an age identity from %s: is it an age private key file?" % identity)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def public_key_of(identity):
    """The public key of one identity line (bytes), given to age-keygen -y on stdin."""
    res = subprocess.run([keygen_binary(), "-y"], input=identity + b"\n", capture_output=True, check=False)
    lines = res.stdout.decode(errors="replace").split()
    if res.returncode != 0 or len(lines) != 1:
        # age-keygen's message is not repeated: it could quote the key.
        raise AgeError("an identity is not an age private key (age-keygen -y cannot read it)")
    return lines[0]


def check_recipient(recipient):
    """Encrypt nothing to the recipient, so a bad key fails before any upload."""
    argv = [age_binary(), "-e"] + recipient_args(recipient)
    res = subprocess.run(argv, input=b"", capture_output=True, check=False)
    if res.returncode != 0:
        raise AgeError("age refuses the recipient: %s" % first_line(res.stderr))
    return argv


def check_identity(path):
    """The age identity file must be a regular file only its owner can read (as ssh requires of private keys)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise AgeError("the age key %s cannot be read: %s" % (path, exc.strerror)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise AgeError("the age key %s is not a regular file" % path)
    if info.st_mode & 0o077:
        raise AgeError("the age key %s is readable or writable by others (mode %04o): chmod 0400 it"
                       % (path, stat.S_IMODE(info.st_mode)))
    if not os.access(path, os.R_OK):
        raise AgeError("the age key %s is not readable by this user" % path)


def first_line(raw):
    """The first non-blank line of what age wrote on stderr (bytes or text)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


class Child:
    """A child process fed on stdin by a thread (`feed(stdin, child)`), its stderr collected by another thread."""

    def __init__(self, argv, feed):
        self.stderr = b""
        self.feed_error = None
        self.stopping = threading.Event()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise AgeError("cannot run %s: %s" % (argv[0], exc)) from exc
        self._stderr_thread = threading.Thread(target=self._collect_stderr, daemon=True)
        self._stderr_thread.start()
        self._feed = feed
        self._feeder = threading.Thread(target=self._run_feed, daemon=True)
        self._feeder.start()

    def _collect_stderr(self):
        self.stderr = self.proc.stderr.read()

    def _run_feed(self):
        try:
            self._feed(self.proc.stdin, self)
        except BrokenPipeError:
            pass  # the child exited; its exit status and stderr say why
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self.feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def exited(self):
        """Wait for the child (its stdout must have been read to the end) and both threads; the exit status."""
        code = self.proc.wait()
        self._stderr_thread.join()
        self._feeder.join()
        return code

    def child_done(self):
        """For the feeder, after a broken pipe: wait for the child to exit and its stderr to be read."""
        self.proc.wait()
        self._stderr_thread.join()

    def stop(self):
        """Kill the child if it still runs, e.g. because the consumer of its output failed."""
        self.stopping.set()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        self.exited()
