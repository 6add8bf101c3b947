"""A literal, loop-based reading of HOLITOM_SPEC.md: the oracle the vectorized ops are tested against.

Deliberately naive (Python loops over segments, frames, clusters and tokens) and
independent of ``holitom_fx.ops``; deterministic tie-breaks as the ops document them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def similarity(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return F.cosine_similarity(x[:-1], x[1:], dim=-1)


def window_profit(sim: torch.Tensor, tau: float, s: int, e: int) -> int:
    if s == e:
        return 0
    return int((sim[s:e] > tau).all(0).sum()) * (e - s)


def segment(sim: torch.Tensor, tau: float, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """Spec step 3: DP over frames; single frame wins ties, then the shortest window."""
    num_frames = sim.shape[0] + 1
    dp = [0] * (num_frames + 1)  # dp[i + 1] is the spec's dp[i]
    choice = [1] * num_frames
    for i in range(num_frames):
        best, best_w = dp[i], 1
        for w in range(2, min(i + 1, max_window) + 1):
            value = dp[i + 1 - w] + window_profit(sim, tau, i - w + 1, i)
            if value > best:
                best, best_w = value, w
        dp[i + 1], choice[i] = best, best_w
    segments, i = [], num_frames - 1
    while i >= 0:
        segments.append((i - choice[i] + 1, i))
        i -= choice[i]
    return segments[::-1], dp[num_frames]


def brute_force_best(sim: torch.Tensor, tau: float, max_window: int) -> int:
    """Best total profit over every partition of the frames into windows of length <= max_window."""
    num_frames = sim.shape[0] + 1
    best = 0
    for cuts in range(2 ** (num_frames - 1)):
        bounds = [0] + [i + 1 for i in range(num_frames - 1) if cuts >> i & 1] + [num_frames]
        windows = list(zip(bounds[:-1], bounds[1:]))
        if any(e - s > max_window for s, e in windows):
            continue
        best = max(best, sum(window_profit(sim, tau, s, e - 1) for s, e in windows))
    return best


def dpc_knn(x: torch.Tensor, clusters: int, knn: int) -> tuple[list[int], list[int]]:
    """Spec step 8 over rows of ``x``; returns (centres sorted by index, nearest centre of every row)."""
    n, dim = x.shape
    xf = x.float()
    d = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i, j] = (xf[i] - xf[j]).square().sum().sqrt() / math.sqrt(dim)
    k = min(knn, clusters)
    density = [math.exp(-float(torch.sort(d[i]).values[:k].square().mean())) for i in range(n)]
    largest = float(d.max())
    score = []
    for i in range(n):
        denser = [j for j in range(n) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta = min(float(d[i, j]) for j in denser) if denser else largest
        score.append(density[i] * delta)
    centres = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:clusters])
    nearest = []
    for i in range(n):
        if i in centres:
            nearest.append(i)
        else:
            nearest.append(min(centres, key=lambda c: (float(d[i, c]), c)))
    return centres, nearest


def cluster_merge(x: torch.Tensor, clusters: int, knn: int, beta: float) -> tuple[list[int], list[torch.Tensor]]:
    """Spec steps 8-9: merged token of each centre, centres in index order."""
    centres, nearest = dpc_knn(x, clusters, knn)
    merged = []
    for c in centres:
        members = [i for i in range(x.shape[0]) if nearest[i] == c and i != c]
        token = x[c].float()
        if members:
            token = beta * token + (1 - beta) * x[members].float().mean(0)
        merged.append(token)
    return centres, merged


def top_by_saliency(saliency: torch.Tensor, k: int) -> list[int]:
    order = sorted(range(saliency.numel()), key=lambda i: (-float(saliency[i]), i))
    return sorted(order[:k])


def outer_merge(x: torch.Tensor, saliency: torch.Tensor, cfg) -> tuple[torch.Tensor, list[int], list[tuple[int, int]], int]:
    """Spec steps 1-10 with the reference budget: (tokens fp32, positions, segments, removed)."""
    num_frames, num_tokens, dim = x.shape
    sim = similarity(x)
    segments, removed = segment(sim, cfg.tau, cfg.max_window)
    scale = min(cfg.retain_ratio * num_frames * num_tokens / (num_frames * num_tokens - removed), 1)
    tokens, positions = [], []
    for s, e in segments:
        static = torch.zeros(num_tokens, dtype=torch.bool) if s == e else (sim[s:e] > cfg.tau).all(0)
        static_idx = torch.nonzero(static).flatten().tolist()
        if static_idx:
            means = x[s:e + 1][:, static_idx].float().mean(0)
            count = round(len(static_idx) * scale)
            if count > 0:
                centres, merged = cluster_merge(means, count, cfg.knn, cfg.beta)
                tokens += merged
                positions += [s * num_tokens + static_idx[c] for c in centres]
        dynamic_idx = torch.nonzero(~static).flatten().tolist()
        for f in range(s, e + 1):
            keep = math.ceil(len(dynamic_idx) * scale)
            n_dom = round(keep * (1 - cfg.contextual_ratio))
            dom_local = top_by_saliency(saliency[f, dynamic_idx], n_dom)
            tokens += [x[f, dynamic_idx[i]].float() for i in dom_local]
            positions += [f * num_tokens + dynamic_idx[i] for i in dom_local]
            rest = [dynamic_idx[i] for i in range(len(dynamic_idx)) if i not in dom_local]
            if keep - n_dom > 0:
                centres, merged = cluster_merge(x[f, rest], keep - n_dom, cfg.knn, cfg.beta)
                tokens += merged
                positions += [f * num_tokens + rest[c] for c in centres]
    out = torch.stack(tokens) if tokens else torch.zeros(0, dim)
    return out, positions, segments, removed


def inner_merge_loop(hidden: torch.Tensor, attention: torch.Tensor, span_start: list[int], span_length: int,
                     ratio: float, visual_rows: list[list[int]] | None = None) -> tuple[torch.Tensor, list[list[int]]]:
    """Inner stage as the released code does it: one fold at a time, rows one by one. ``visual_rows``:
    the visual token indices of each row, where they are not one span."""
    out, keeps = [], []
    n_keep = max(round(span_length * (1 - ratio)), 1 if span_length else 0)
    for b in range(hidden.shape[0]):
        h = hidden[b].float().clone()
        start = span_start[b] if visual_rows is None else None
        visual = list(range(start, start + span_length)) if visual_rows is None else list(visual_rows[b])
        order = sorted(visual, key=lambda i: (-float(attention[b, i]), i))
        kept, dropped = sorted(order[:n_keep]), sorted(order[n_keep:])
        original = h.clone()
        for i in dropped:
            sims = [float(F.cosine_similarity(original[i], original[j], dim=0)) for j in kept]
            j = kept[max(range(len(kept)), key=lambda q: (sims[q], -q))]
            h[j] = (h[j] + h[i]) / 2
        keep = [i for i in range(h.shape[0]) if i not in dropped]
        out.append(h[keep])
        keeps.append(keep)
    return torch.stack(out), keeps
