"""A pod worker's processes: environment, command line, mount namespace, start and exit."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from smtpinfra_kube import Obj

from .expansion import expand
from .images import IMAGE_DEFAULTS
from .state import Container, NotReadyError, Probe, now_rfc3339
from .volumes import PodVolumes

log = logging.getLogger(__name__)

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_runner() -> None:
    """preexec_fn: the process gets SIGKILL if the runner dies without cleaning up."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def image_roots() -> list[Path]:
    """What a local image consists of here: the checkout the runner runs from and its interpreter's prefix."""
    checkout = Path(__file__).resolve().parents[3]
    prefix = Path(sys.prefix).resolve()
    return [checkout] if prefix.is_relative_to(checkout) else [checkout, prefix]


class PodProcesses(PodVolumes):
    """Starts container processes in a private mount+UTS namespace and records their exits."""

    def _build_env(self, pod: Obj, c: Container) -> dict[str, str]:
        spec = c.spec
        env: dict[str, str] = {}
        for src in spec.get("envFrom") or []:
            prefix = str(src.get("prefix", ""))
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            kind = "configmap" if src.get("configMapRef") is not None else "secret"
            obj = self._lookup(kind, str(ref.get("name", "")))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise NotReadyError("CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found')
            for k, v in self._source_data(kind, obj).items():
                env[prefix + k] = v.decode(errors="replace")
        for var in spec.get("env") or []:
            name = str(var["name"])
            if "valueFrom" not in var:
                env[name] = expand(str(var.get("value", "")), env)
                continue
            vf = var["valueFrom"]
            if vf.get("fieldRef"):
                env[name] = self._field(pod, str(vf["fieldRef"]["fieldPath"]))
            elif vf.get("resourceFieldRef"):
                env[name] = self._resource_field(pod, vf["resourceFieldRef"])
            else:
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef") or {}
                kind = "configmap" if vf.get("configMapKeyRef") is not None else "secret"
                obj = self._lookup(kind, str(ref.get("name", "")))
                data = self._source_data(kind, obj) if obj is not None else None
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    raise NotReadyError(
                        "CreateContainerConfigError", f'{kind} "{ref.get("name")}" key {ref.get("key")!r} not found'
                    )
                env[name] = data[str(ref["key"])].decode(errors="replace")
        return env

    def _process_env(self, pod: Obj, c: Container, env: dict[str, str]) -> dict[str, str]:
        """What the process gets: runtime defaults, then the container's own env."""
        server = urllib.parse.urlsplit(self.client.server)
        base = {
            "PATH": self.runner.config.path,
            "HOME": "/root",
            "HOSTNAME": self._hostname(pod),
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port or 443),
            "PYTHONUNBUFFERED": "1",
        }
        host = {name: os.environ[name] for name in self.runner.config.host_env if name in os.environ}
        return {**base, **host, **env}

    def _hostname(self, pod: Obj) -> str:
        return str(pod["spec"].get("hostname") or self.pod_name)[:63]

    def _argv(self, c: Container, env: dict[str, str]) -> list[str]:
        """command/args like a container runtime: image ENTRYPOINT/CMD fill in what the spec omits."""
        image = str(c.spec.get("image", ""))
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        entrypoint, cmd = IMAGE_DEFAULTS.get(repo, ([], []))
        command = c.spec.get("command")
        args = c.spec.get("args")
        argv = [*command, *(args or [])] if command else [*entrypoint, *(args if args is not None else cmd)]
        argv = [expand(str(a), env) for a in argv]
        if not argv:
            raise NotReadyError("RunContainerError", f"container {c.name}: no command and no known entrypoint")
        return argv

    def refresh_hosts(self, pod: Obj, force: bool = False) -> None:
        """Write the pod's /etc/hosts: the host's, the pod's own name, and the cluster's Service names.

        The Service names stand in for cluster DNS + kube-proxy (see ``servicedns``). The file is
        rewritten in place (same inode), so the bind mount in a running pod sees the new content.
        """
        version = self.runner.hosts_version
        if not force and version == self.hosts_seen:
            return
        self.hosts_seen = version
        host_hosts = ""
        with contextlib.suppress(OSError):
            host_hosts = Path("/etc/hosts").read_text()
        services = "".join(f"{line}\n" for line in self.runner.service_hosts(self.namespace))
        text = (f"# managed by the smtp-infra pod runner\n{host_hosts.rstrip()}\n"
                f"{self.pod_ip}\t{self._hostname(pod)}\n# Services (cluster DNS + kube-proxy stand-in)\n{services}")
        hosts = self.dir / "etc-hosts"
        with contextlib.suppress(OSError):
            if hosts.read_text() == text:
                return
        self.dir.mkdir(parents=True, exist_ok=True)
        with hosts.open("r+" if hosts.exists() else "w") as fh:
            fh.write(text)
            fh.truncate()

    def _mount_script(self, pod: Obj, c: Container, env: dict[str, str]) -> str:
        """Bash run inside the new mount+UTS namespace: bind volumes, set the hostname, exec."""
        vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        lines = ["set -e"]
        mounts: list[tuple[str, Path, bool]] = []
        for vm in c.spec.get("volumeMounts") or []:
            vol = vols.get(vm["name"])
            if vol is None:
                raise NotReadyError("CreateContainerConfigError", f"volumeMount of unknown volume {vm['name']}")
            src = self.volume_path(pod, vol)
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                src = src / sub
                if not src.exists() and not src.is_symlink():
                    src.mkdir(parents=True, exist_ok=True)
                src = src.resolve()
            mounts.append((str(vm["mountPath"]), src, bool(vm.get("readOnly"))))
        if not any(m[0] == "/etc/hosts" for m in mounts):
            self.refresh_hosts(pod, force=True)
            mounts.append(("/etc/hosts", self.dir / "etc-hosts", False))
        ordered = sorted(mounts, key=lambda m: m[0].rstrip("/").count("/"))
        # Every source is opened before anything is mounted and bound through /proc/self/fd: a
        # volume mounted at e.g. /tmp would otherwise hide the sources that live under it (the
        # runner's state directory may be there).
        for index, (_, src, _) in enumerate(ordered):
            lines.append(f"exec {{src{index}}}<{shlex.quote(str(src))}")
        for index, (dst, src, ro) in enumerate(ordered):
            q_dst, q_src = shlex.quote(dst), f"/proc/self/fd/$src{index}"
            if src.is_dir():
                lines.append(f"[ -d {q_dst} ] || mkdir -p {q_dst}")
            else:
                lines.append(f"[ -e {q_dst} ] || {{ mkdir -p \"$(dirname {q_dst})\"; : > {q_dst}; }}")
            lines.append(f"mount --no-canonicalize --bind {q_src} {q_dst}")
            if ro:
                lines.append(f"mount -o remount,bind,ro {q_dst}")
        # The image of a local pod is this checkout and its interpreter: a volume mounted over a path
        # that holds them (an emptyDir at /tmp when the checkout is under /tmp) would hide the very
        # program the container runs, so they are bound back on top, as a container runtime's image
        # layers would never be hidden by a volume elsewhere.
        hidden = [root for root in image_roots() if any(
            m[0] != "/etc/hosts" and (str(root) + "/").startswith(m[0].rstrip("/") + "/") for m in ordered)]
        for index, root in enumerate(hidden):
            lines.insert(1 + index, f"exec {{img{index}}}<{shlex.quote(str(root))}")
        for index, root in enumerate(hidden):
            lines.append(f"mkdir -p {shlex.quote(str(root))}")
            lines.append(f"mount --no-canonicalize --bind /proc/self/fd/$img{index} {shlex.quote(str(root))}")
        lines.extend(f"exec {{img{index}}}<&-" for index in range(len(hidden)))
        lines.extend(f"exec {{src{index}}}<&-" for index in range(len(ordered)))
        lines.append(f"hostname {shlex.quote(self._hostname(pod))} 2>/dev/null || true")
        workdir = c.spec.get("workingDir") or "/"
        lines.append(f"cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    def _start(self, pod: Obj, c: Container) -> None:
        try:
            env = self._build_env(pod, c)
            proc_env = self._process_env(pod, c, env)
            argv = self._argv(c, proc_env)
            script = self._mount_script(pod, c, proc_env)
        except NotReadyError as err:
            c.state = {"waiting": {"reason": err.reason, "message": err.message}}
            c.next_start = time.monotonic() + 1.0
            return
        if "/" not in argv[0]:
            found = shutil.which(argv[0], path=proc_env.get("PATH"))
            if found:
                argv[0] = found
        log_path = self.runner.log_path(self.namespace, self.pod_name, c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.append("--map-root-user")
        with log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(  # preexec_fn only calls prctl
                    [*unshare, "--", "/bin/bash", "-c", script, "bash", *argv],
                    env=proc_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_runner,
                    close_fds=True,
                )
            except OSError as err:
                c.state = {"waiting": {"reason": "RunContainerError", "message": str(err)}}
                c.next_start = time.monotonic() + 2.0
                return
        c.env = proc_env
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        c.kill_reason = None
        now = time.monotonic()
        c.readiness = Probe(c.spec["readinessProbe"], now) if c.spec.get("readinessProbe") else None
        c.liveness = Probe(c.spec["livenessProbe"], now) if c.spec.get("livenessProbe") else None
        c.startup = Probe(c.spec["startupProbe"], now) if c.spec.get("startupProbe") else None
        log.info("pod %s/%s: container %s started (pid %d): %s", self.namespace, self.pod_name, c.name,
                 c.proc.pid, " ".join(argv))

    def _record_exit(self, c: Container) -> Obj:
        """The process of ``c`` exited: clean up its process group, return its terminated state."""
        assert c.proc is not None
        code = c.proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, signal.SIGKILL)  # leftovers of its process group
        exit_code = code if code >= 0 else 128 - code
        reason = "Completed" if exit_code == 0 else ("Error" if c.kill_reason is None else c.kill_reason)
        term: Obj = {"exitCode": exit_code, "reason": reason, "startedAt": c.started_at, "finishedAt": now_rfc3339()}
        if code < 0:
            term["signal"] = -code
        c.proc = None
        c.ready = False
        c.exit_code = exit_code
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.pod_name, c.name, exit_code)
        return term
