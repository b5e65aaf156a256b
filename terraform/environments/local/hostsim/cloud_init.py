"""A minimal cloud-init: the modules the render module's documents use, in
cloud-init's order.

    users              (init stage)   system users (useradd)
    write_files        (init stage)   entries without `defer`
    packages           (config stage) refused here: a local host installs nothing
    write_files        (final stage)  entries with `defer: true` (owned by the users above)
    runcmd             (final stage)  each line with /bin/sh -e, in order; the first failure fails the boot

Anything else in the document is an error, so a key added to the render
module without support here fails the local environment loudly instead of
being skipped. Runs inside the host (its own root), as root.

    python3 -m hostsim.cloud_init write-files --root DIR USER_DATA   # tests: files only, under DIR
"""
from __future__ import annotations

import argparse
import base64
import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

SUPPORTED = {"users", "write_files", "runcmd", "packages"}
WRITE_FILE_KEYS = {"path", "content", "permissions", "owner", "defer", "encoding"}


class CloudInitError(RuntimeError):
    """The document uses something this runner does not do, or a step failed."""


def load(text: str) -> dict[str, Any]:
    import yaml  # Debian's python3-yaml (a cloud-init dependency): only the runner needs it

    if not text.startswith("#cloud-config"):
        raise CloudInitError("user_data is not a #cloud-config document")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise CloudInitError("user_data is not a mapping")
    unknown = sorted(set(doc) - SUPPORTED)
    if unknown:
        raise CloudInitError(f"cloud-config keys not supported by hostsim: {', '.join(unknown)}")
    return doc


def create_users(users: list[Any]) -> None:
    for entry in users:
        if entry == "default" or not isinstance(entry, dict):
            raise CloudInitError(f"users: only explicit users are supported, got {entry!r}")
        name = entry["name"]
        try:
            pwd.getpwnam(name)
            continue  # the image already has it
        except KeyError:
            pass
        cmd = ["useradd", "--shell", entry.get("shell", "/usr/sbin/nologin")]
        if entry.get("system"):
            cmd.append("--system")
        if entry.get("no_create_home"):
            cmd.append("--no-create-home")
        if entry.get("homedir"):
            cmd += ["--home-dir", entry["homedir"]]
        subprocess.run(cmd + [name], check=True)
        if entry.get("lock_passwd", True):
            subprocess.run(["passwd", "--lock", name], check=True, capture_output=True)


def write_file(entry: dict[str, Any], root: Path = Path("/"), chown: bool = True) -> Path:
    unknown = sorted(set(entry) - WRITE_FILE_KEYS)
    if unknown:
        raise CloudInitError(f"write_files {entry.get('path')}: keys not supported: {', '.join(unknown)}")
    path = root / str(entry["path"]).lstrip("/")
    content = entry.get("content", "")
    data = base64.b64decode(content) if entry.get("encoding") in ("b64", "base64") else content.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = int(str(entry.get("permissions", "0644")), 8)
    # Created with its final mode: a secret is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if chown:
        user, _, group = str(entry.get("owner", "root:root")).partition(":")
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
    return path


def run_commands(commands: list[Any], env: dict[str, str]) -> None:
    for i, cmd in enumerate(commands):
        argv = ["/bin/sh", "-e", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        print(f"hostsim: runcmd[{i}]: {cmd}", flush=True)
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise CloudInitError(f"runcmd[{i}] exited {proc.returncode}: {cmd}")


def run(doc: dict[str, Any], env: dict[str, str]) -> None:
    """Apply a loaded document to this host, in cloud-init's module order."""
    if doc.get("packages"):
        raise CloudInitError("packages: a local host installs no packages (the machine image has them)")
    create_users(doc.get("users") or [])
    files = doc.get("write_files") or []
    for entry in files:
        if not entry.get("defer"):
            write_file(entry)
    for entry in files:
        if entry.get("defer"):
            write_file(entry)
    run_commands(doc.get("runcmd") or [], env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m hostsim.cloud_init")
    sub = p.add_subparsers(dest="command", required=True)
    wf = sub.add_parser("write-files", help="write every write_files entry under ROOT (no chown)")
    wf.add_argument("--root", type=Path, required=True)
    wf.add_argument("user_data", type=Path)
    args = p.parse_args(argv)
    try:
        doc = load(args.user_data.read_text())
        for entry in doc.get("write_files") or []:
            print(write_file(entry, root=args.root, chown=False))
    except CloudInitError as exc:
        print(f"cloud_init: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
