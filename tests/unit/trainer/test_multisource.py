"""Several named source domains: config, domain assignment, the merged source vocabulary with
``source_item_domain``, the one-source counterpart on the same split, and every strategy on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny_config
from tests.unit.trainer.generic_logs import generic_config, write_csv
from trainer.config import DataConfig, ExperimentConfig, SourceDomainConfig, apply_overrides
from trainer.config_checks import config_problems
from trainer.data import load_dataset
from trainer.dataset_report import format_dataset_report
from trainer.splits import assign_source_domains, split_dataset
from trainer.strategies import strategy_names
from trainer.training import Trainer

TWO_SOURCES = [
    {"name": "action", "categories": ["Action", "Thriller", "Sci-Fi"]},
    {"name": "drama", "categories": ["Drama", "Crime", "War"]},
]
TARGET = ["Comedy", "Romance", "Children's"]


def three_domain_rows(users: int = 24) -> list[dict]:
    """Per user: 4 books, 4 music and 4 movie (target) interactions, spread over the whole
    timeline (an hour apart); the domain column holds the domain's name."""
    rows, hour = [], 0
    for k in range(4):
        for u in range(users):
            for domain, prefix, step in (("books", "b", 1), ("music", "m", 2), ("movies", "t", 3)):
                hour += 1
                rows.append(
                    {
                        "user_id": f"u{u}",
                        "item_id": f"{prefix}{(u * step + k * 5) % 9}",
                        "timestamp": str(1_000_000 + 3600 * hour),
                        "domain": domain,
                    }
                )
    return rows


def named_config(tmp_path, **data) -> ExperimentConfig:
    path = write_csv(tmp_path / "log.csv", three_domain_rows())
    config = generic_config(path, source_domains=["books", "music"], target_domain="movies", **data)
    config.data.__post_init__()  # bare names -> SourceDomainConfig, as from YAML
    return config


def test_yaml_source_domains_become_typed_and_round_trip():
    raw = yaml.safe_load(
        """
data:
  source_domains:
    - {name: action, categories: [Action, Thriller]}
    - {name: drama, categories: [Drama], enabled: false}
"""
    )
    config = ExperimentConfig.from_dict(raw)
    assert config.data.source_domains == [
        SourceDomainConfig("action", ["Action", "Thriller"]),
        SourceDomainConfig("drama", ["Drama"], enabled=False),
    ]
    assert [s.name for s in config.data.sources()] == ["action"]
    assert len(config.data.sources(include_disabled=True)) == 2
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    overridden = apply_overrides(
        ExperimentConfig(), ["data.source_domains=[{name: a, categories: [X]}]"]
    )
    assert overridden.data.sources() == [SourceDomainConfig("a", ["X"])]
    # The old flat list is one source named "source".
    assert [s.name for s in DataConfig().sources()] == ["source"]


def test_bad_source_domains_are_named_before_loading():
    with pytest.raises(ValueError, match="each entry needs a name"):
        DataConfig(source_domains=[{"categories": ["Action"]}])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['genres'\]"):
        DataConfig(source_domains=[{"name": "a", "genres": ["Action"]}])
    for data, message in (
        ({"source_domains": [{"name": "a"}, {"name": "a"}]}, "names must be non-empty and unique"),
        ({"source_domains": [{"name": "target"}]}, "is also data.target_domain"),
        (
            {"source_domains": [{"name": "a"}], "source_categories": ["Action"]},
            "both set",
        ),
        ({"source_domains": []}, "is empty"),
        ({"source_domains": [{"name": "a", "enabled": False}]}, "enable one"),
    ):
        config = ExperimentConfig.from_dict({"data": data})
        assert any(message in p for p in config_problems(config)), (data, message)
    embedding = ExperimentConfig.from_dict({"model": {"source_domain_embedding": True}})
    assert any("one source domain" in p for p in config_problems(embedding))


def test_genre_sources_merge_into_one_vocabulary_with_item_domains(ml100k_raw):
    data = DataConfig(source_domains=TWO_SOURCES, target_categories=TARGET)
    assignment = assign_source_domains(ml100k_raw, data)
    split = split_dataset(ml100k_raw, data, ExperimentConfig().split)
    assert split.source_domain_names == ["action", "drama"]
    domains = split.source_item_domain
    assert domains.shape == (len(split.source_vocab),) and domains[0] == 0
    assert set(domains[1:].tolist()) == {1, 2}
    sources = [set(s["categories"]) for s in TWO_SOURCES]
    for index in range(1, len(split.source_vocab)):
        categories = set(ml100k_raw.item_table[split.source_vocab.ids[index]].categories)
        assert not categories & set(TARGET)  # overlaps with the target are dropped
        first = next(k + 1 for k, s in enumerate(sources) if categories & s)
        assert domains[index] == first  # an item in both sources belongs to the first listed
    report = split.dataset_report
    assert set(report["sources"]) == {"action", "drama"}
    assert sum(s["interactions"] for s in report["sources"].values()) == int(
        (assignment.domains == "source").sum()
    )
    several = report["items_in_several_sources"]
    assert several["count"] == len(assignment.multi_source_items) > 0
    assert "source drama:" in format_dataset_report(report)
    stats = split.stats()
    assert stats["source_items_action"] + stats["source_items_drama"] == stats["source_items"]


def test_one_source_counterpart_keeps_the_target_and_the_cold_users(ml100k_raw):
    split_config = ExperimentConfig().split
    both = split_dataset(
        ml100k_raw, DataConfig(source_domains=TWO_SOURCES, target_categories=TARGET), split_config
    )
    first_only = [TWO_SOURCES[0], {**TWO_SOURCES[1], "enabled": False}]
    one = split_dataset(
        ml100k_raw, DataConfig(source_domains=first_only, target_categories=TARGET), split_config
    )
    assert one.target_vocab.ids == both.target_vocab.ids
    assert one.cold_users == both.cold_users
    assert one.train_target.keys() == both.train_target.keys()
    assert one.source_domain_names == ["action"]
    action = {both.source_vocab.ids[i] for i in np.flatnonzero(both.source_item_domain == 1)}
    assert set(one.source_vocab.ids[1:]) == action
    # Dropping the second source without "enabled: false" would move drama-comedies into the
    # target: the comparison would be on another target.
    plain = split_dataset(
        ml100k_raw,
        DataConfig(source_domains=[TWO_SOURCES[0]], target_categories=TARGET),
        split_config,
    )
    assert len(plain.target_vocab) > len(both.target_vocab)


def test_domain_column_with_named_sources(tmp_path):
    config = named_config(tmp_path)
    raw = load_dataset(config.data)
    split = split_dataset(raw, config.data, config.split)
    assert split.source_domain_names == ["books", "music"]
    by_item = dict(zip(split.source_vocab.ids, split.source_item_domain.tolist(), strict=True))
    assert by_item["b1"] == 1 and by_item["m1"] == 2
    assert all(i.startswith("t") for i in split.target_vocab.ids[1:])
    # The feature store keeps the serving contract's two domains.
    assert {row[1] for row in split.feature_rows} == {"source", "target"}


def test_unlisted_domain_names_fail_or_are_dropped(tmp_path):
    path = write_csv(tmp_path / "log.csv", three_domain_rows())
    config = generic_config(path, source_domains=["books"], target_domain="movies")
    config.data.__post_init__()
    with pytest.raises(ValueError, match=r"holds \['music'\].*data.unlisted_domains=drop"):
        load_dataset(config.data)
    config.data.unlisted_domains = "drop"
    raw = load_dataset(config.data)
    split = split_dataset(raw, config.data, config.split)
    assert all(i.startswith("b") for i in split.source_vocab.ids[1:])
    assert split.dataset_report["rows_without_domain"] == 24 * 4


@pytest.mark.parametrize("strategy", strategy_names())
def test_every_strategy_trains_on_two_sources_with_a_domain_embedding(strategy, tmp_path):
    config = named_config(tmp_path)
    config.model = tiny_config().model
    config.model.source_domain_embedding = True
    config.train = tiny_config(strategy=strategy, epochs=2, pretrain_epochs=1).train
    config.train.bridge_epochs = 1
    raw = load_dataset(config.data)
    split = split_dataset(raw, config.data, config.split)
    trainer = Trainer(config, split, show_progress=False)
    result = trainer.fit(strategy, 0)
    tables = [
        m.source_embeddings
        for m in result.model.modules()
        if hasattr(m, "source_embeddings") and hasattr(m, "set_source_item_domain")
    ]
    assert tables and all(t.num_domains == 2 for t in tables)
    assert torch.equal(tables[0].item_domain, torch.from_numpy(split.source_item_domain))
    assert split.valid["warm"].users and split.valid["cold"].users
    assert all(np.isfinite(result.valid[g]["ndcg@10"]) for g in ("warm", "cold"))


def test_disabled_named_source_keeps_the_cold_users_of_the_log(tmp_path):
    both_config = named_config(tmp_path)
    both = split_dataset(load_dataset(both_config.data), both_config.data, both_config.split)
    one_config = named_config(tmp_path)
    one_config.data.source_domains[1].enabled = False
    one = split_dataset(load_dataset(one_config.data), one_config.data, one_config.split)
    assert one.source_domain_names == ["books"]
    assert all(i.startswith("b") for i in one.source_vocab.ids[1:])
    assert one.cold_users == both.cold_users and one.target_vocab.ids == both.target_vocab.ids


def test_same_id_in_a_named_source_and_the_target_is_caught(tmp_path):
    rows = three_domain_rows()
    rows[0] = {**rows[0], "item_id": "t1"}  # a books row naming a movie's id
    path = write_csv(tmp_path / "log.csv", rows)
    config = generic_config(path, source_domains=["books", "music"], target_domain="movies")
    config.data.__post_init__()
    with pytest.raises(
        ValueError, match=r"1 item id\(s\) appear in both the source and the target"
    ):
        load_dataset(config.data)
    config.data.item_id_collisions = "namespace"
    raw = load_dataset(config.data)
    assert "source:t1" in set(raw.items.tolist()) and "target:t1" in set(raw.items.tolist())


def test_an_item_in_two_named_sources_belongs_to_the_first_listed(tmp_path):
    rows = three_domain_rows()
    music = next(k for k, r in enumerate(rows) if r["domain"] == "music")
    rows[music] = {**rows[music], "item_id": "b1"}
    config = generic_config(
        write_csv(tmp_path / "log.csv", rows), source_domains=["music", "books"]
    )
    config.data.target_domain = "movies"
    config.data.__post_init__()
    split = split_dataset(load_dataset(config.data), config.data, config.split)
    assert split.source_domain_names == ["music", "books"]
    assert split.source_item_domain[split.source_vocab.index["b1"]] == 1  # music: listed first
    assert split.source_item_domain[split.source_vocab.index["b2"]] == 2
    several = split.dataset_report["items_in_several_sources"]
    assert several["count"] == 1 and several["examples"] == ["b1"]
