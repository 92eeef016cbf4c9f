"""The dataset report printed before training and saved with the run's results.

A transfer gain means little without knowing what it was measured on: how many users the two
domains share, how sparse they are, how long histories are, which split was used and what the
data checks found. Every run carries this report (results.json "dataset", results.md header).
"""

from __future__ import annotations

import numpy as np

SPLIT_DESCRIPTIONS = {
    "time": "global timeline (last slice of time = test, the slice before = validation)",
    "leave_last_out": "per user: last interaction = test, the one before = validation",
    "random": "per interaction: seeded random draw into test / validation / training",
}


def describe_split(name: str, has_timestamps: bool) -> str:
    text = f"{name}: {SPLIT_DESCRIPTIONS.get(name, name)}"
    if not has_timestamps:
        text += "; the log has no timestamps, row order stands in for time"
    return text


def _quantiles(lengths: np.ndarray) -> dict[str, float]:
    if not len(lengths):
        return {}
    q = np.quantile(lengths, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2]), "max": int(lengths.max())}


def build_dataset_report(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    domains: np.ndarray,
    split: str,
    has_timestamps: bool,
    has_titles: bool,
    checks: dict,
    source_rows: dict[str, np.ndarray] | None = None,
    multi_source_items: list[str] | None = None,
) -> dict:
    """``source_rows``: per named source domain, the mask of its rows (several sources get one
    size line each); ``multi_source_items``: items several sources claimed (first one wins)."""
    report: dict = {
        "dataset": name,
        "split": split,
        "split_description": describe_split(split, has_timestamps),
        "has_timestamps": has_timestamps,
        "has_titles": has_titles,
        "rows_without_domain": int((domains == "").sum()),
        "domains": {},
    }
    user_sets = {}
    for domain in ("source", "target"):
        rows = domains == domain
        domain_users, per_user = np.unique(users[rows], return_counts=True)
        n_items = len(np.unique(items[rows]))
        user_sets[domain] = set(domain_users.tolist())
        report["domains"][domain] = {
            "users": len(domain_users),
            "items": n_items,
            "interactions": int(rows.sum()),
            "density": float(rows.sum() / max(len(domain_users) * n_items, 1)),
            "history_length": _quantiles(per_user),
        }
    report["shared_users"] = len(user_sets["source"] & user_sets["target"])
    if source_rows and len(source_rows) > 1:
        report["sources"] = {}
        for source, rows in source_rows.items():
            source_users = np.unique(users[rows])
            report["sources"][source] = {
                "users": len(source_users),
                "items": len(np.unique(items[rows])),
                "interactions": int(rows.sum()),
                "shared_users_with_target": len(set(source_users.tolist()) & user_sets["target"]),
            }
        multi = multi_source_items or []
        report["items_in_several_sources"] = {
            "count": len(multi),
            "rule": "kept in the first source listed",
            "examples": multi[:5],
        }
    report.update(checks)
    return report


def format_dataset_report(report: dict) -> str:
    """Plain lines for the console and the results.md header."""
    if not report:
        return ""
    lines = [f"dataset {report['dataset']}; split {report['split_description']}"]
    for domain, d in report["domains"].items():
        h = d["history_length"]
        lengths = (
            f"history length p10/p50/p90/max {h['p10']:.0f}/{h['p50']:.0f}/{h['p90']:.0f}/{h['max']}"
            if h
            else "no histories"
        )
        lines.append(
            f"  {domain}: {d['users']} users, {d['items']} items, {d['interactions']} interactions, "
            f"density {d['density']:.4%}, {lengths}"
        )
    for source, d in report.get("sources", {}).items():
        lines.append(
            f"    source {source}: {d['users']} users, {d['items']} items, "
            f"{d['interactions']} interactions, {d['shared_users_with_target']} users shared "
            "with the target"
        )
    multi = report.get("items_in_several_sources")
    if multi and multi["count"]:
        lines.append(
            f"    items in several sources: {multi['count']} ({multi['rule']}), "
            f"e.g. {multi['examples'][:3]}"
        )
    lines.append(
        f"  shared users: {report['shared_users']}; rows in neither domain: {report['rows_without_domain']}"
    )
    dup = report.get("cross_domain_duplicates")
    if dup is not None:
        line = (
            f"  same product in both domains ({report.get('duplicate_rule', '')}): {dup['pairs']} "
            f"item pair(s), {dup['source_interactions']} source interactions, action={dup['action']}"
        )
        if dup["pairs"] and dup["action"] == "report":
            line += (
                " -- WARNING: these leak target answers through the source history; "
                "set data.cross_domain_duplicates=drop or merge"
            )
        lines.append(line)
        for p in dup.get("examples", [])[:3]:
            lines.append(
                f"    {p['source_item']} ~ {p['target_item']} (Jaccard {p['jaccard']:.2f}, "
                f"{p['source_users']}/{p['target_users']} users)"
            )
    sub = report.get("subsample")
    if sub:
        lines.append(
            f"  sparse form: at most {sub['max_interactions_per_user_domain']} interactions per "
            f"user and domain (random, seed {sub['subsample_seed']}): kept "
            f"{sub['interactions_after']} of {sub['interactions_before']}"
        )
    collisions = report.get("item_id_collisions")
    if collisions and collisions["count"]:
        lines.append(
            f"  item ids in both domains: {collisions['count']}, action={collisions['action']}"
        )
    vectors = report.get("item_vectors")
    if vectors:
        from trainer.item_vectors import ContentReport

        lines += ContentReport(**vectors).lines()
    if not report["has_titles"]:
        lines.append("  no item titles (item ids stand in for titles)")
    return "\n".join(lines)
