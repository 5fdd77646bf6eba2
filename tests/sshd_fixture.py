"""A throwaway sshd on 127.0.0.1:22 and a throwaway root key for the cluster-launcher test.

Everything here changes machine state (root's authorized_keys, /run/sshd, a daemon on port 22),
so every step records what it found and `LoopbackSshd.close()` puts it back exactly:
only our own authorized_keys line is removed, only the directories we made are deleted,
only the processes we started are stopped (by pid).
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from mtlsweep.search.processes import end_processes, process_table

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
# Ray's local provider has no ssh port setting (auth has ssh_user, ssh_private_key and
# ssh_proxy_command only), so the on-prem YAML's head_ip is reached on the standard port.
PORT = 22
CLIENT_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
               "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]


def missing_requirements() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (the on-prem YAML logs in as ssh_user root)"
    missing = [name for name, ok in (("sshd", os.access(SSHD, os.X_OK)), ("ssh", shutil.which("ssh")),
                                     ("ssh-keygen", shutil.which("ssh-keygen")), ("rsync", shutil.which("rsync")))
               if not ok]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install openssh-server rsync)"
    return None


def port_in_use(host: str = HOST, port: int = PORT) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def _children(pid: int) -> list[int]:
    return [p for p, proc in process_table().items() if proc.ppid == pid]


class LoopbackSshd:
    """Start with `start()`, always `close()` (idempotent)."""

    def __init__(self, workdir: Path, log=print):
        self.dir = Path(workdir)
        self.log = log
        self.home = Path(pwd.getpwuid(0).pw_dir)
        self.key = self.dir / "id_ed25519"
        self.tag = f"mtlsweep-cluster-launcher-test-{uuid.uuid4().hex[:12]}"
        self.auth_line = None
        self.proc = None
        self._made_run_sshd = False
        self._made_ssh_dir = False
        self._made_auth_file = False
        self._auth_before = None
        self._log_file = None

    # -- set-up -----------------------------------------------------------------------------------
    def start(self) -> "LoopbackSshd":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.tag, "-f", str(self.key)],
                       check=True, timeout=30)
        host_key = self.dir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
        self._authorize()
        run_sshd = Path("/run/sshd")          # sshd's privilege-separation directory
        if not run_sshd.exists():
            run_sshd.mkdir(mode=0o755)
            self._made_run_sshd = True
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {PORT}", f"ListenAddress {HOST}", f"HostKey {host_key}", f"PidFile {self.dir / 'sshd.pid'}",
            "AuthorizedKeysFile .ssh/authorized_keys", "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
            "AllowUsers root", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes yes", "MaxSessions 50", "MaxStartups 50", "LogLevel VERBOSE", ""]))
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True, timeout=30)
        self._log_file = open(self.dir / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not port_in_use():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not come up on {HOST}:{PORT}:\n{self.sshd_log()}")
            time.sleep(0.1)
        r = subprocess.run(["ssh", "-i", str(self.key), *CLIENT_OPTS, f"root@{HOST}", "true"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ssh root@{HOST} with the throwaway key failed: {r.stderr}\n{self.sshd_log()}")
        self.log(f"sshd pid {self.proc.pid} on {HOST}:{PORT}, key {self.key}")
        return self

    def _authorize(self):
        ssh_dir = self.home / ".ssh"
        if not ssh_dir.exists():
            ssh_dir.mkdir(mode=0o700)
            self._made_ssh_dir = True
        auth = ssh_dir / "authorized_keys"
        self._made_auth_file = not auth.exists()
        pub = (self.key.with_suffix(".pub")).read_text().strip()
        self.auth_line = f'from="{HOST}" {pub}'
        old = auth.read_text() if auth.exists() else ""
        self._auth_before = old
        with open(auth, "a") as f:
            if old and not old.endswith("\n"):
                f.write("\n")
            f.write(self.auth_line + "\n")
        if self._made_auth_file:
            os.chmod(auth, 0o600)

    # -- tear-down --------------------------------------------------------------------------------
    def sshd_log(self) -> str:
        p = self.dir / "sshd.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            # Connection handlers are children of the listener; stop the listener first so no new
            # ones start, then the handlers left over (e.g. from ssh control masters).
            kids = _children(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            end_processes(kids, grace_s=10)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._unauthorize()
        if self._made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)
            self._made_run_sshd = False

    def _unauthorize(self):
        if self.auth_line is None:
            return
        ssh_dir = self.home / ".ssh"
        auth = ssh_dir / "authorized_keys"
        if auth.exists():
            now = auth.read_text()
            before = self._auth_before or ""
            sep = "\n" if before and not before.endswith("\n") else ""
            if now == before + sep + self.auth_line + "\n":     # untouched meanwhile: restore byte for byte
                kept = before
            else:                                                 # someone else edited it: drop only our line
                kept = "".join(ln for ln in now.splitlines(keepends=True) if ln.rstrip("\r\n") != self.auth_line)
            if self._made_auth_file and not kept:
                auth.unlink()
            else:
                auth.write_text(kept)
        if self._made_ssh_dir:
            try:
                ssh_dir.rmdir()       # only when nothing else was put there meanwhile
            except OSError:
                pass
        self.auth_line = None
