"""``$(VAR)`` expansion, exactly like k8s.io/kubernetes/third_party/forked/golang/expansion."""

from __future__ import annotations


def expand(text: str, env: dict[str, str]) -> str:
    """Expand ``$(VAR)`` from ``env``; ``$$`` is an escaped ``$``; unknown references stay as is."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    # Unterminated reference: the kubelet keeps the rest verbatim.
                    out.append(text[i:])
                    break
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
            out.append(ch + nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
