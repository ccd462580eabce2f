import collections
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alma_data.seeds import SeedError, load_judge, load_sft


def test_bundled_sft_seeds_are_many_and_varied():
    seeds = load_sft("bundled:sft")
    assert len(seeds) >= 200
    assert len({s.category for s in seeds}) >= 10
    assert len({s.prompt for s in seeds}) == len(seeds)


def test_bundled_judge_seeds_use_every_level_with_several_responses_per_prompt():
    seeds = load_judge("bundled:judge")
    assert len(seeds) >= 200
    assert {s.score for s in seeds} == set(range(11))
    per_prompt = collections.Counter(s.prompt for s in seeds)
    assert min(per_prompt.values()) >= 3
    # Within a prompt the responses are rated differently: the judge learns to rank.
    by_prompt = collections.defaultdict(set)
    for s in seeds:
        by_prompt[s.prompt].add(s.score)
    assert all(len(v) >= 3 for v in by_prompt.values())


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Say hi", "response": "Hi!", "score": 7}


@pytest.mark.parametrize("bad,needle", [
    ('{"prompt": "x", "response": ', "not valid JSON"),
    ({"prompt": "x"}, "missing column 'response'"),
    ({"prompt": "   ", "response": "y", "score": 1}, "'prompt' is empty"),
    ({"prompt": "x" * 20000, "response": "y", "score": 1}, "over the limit"),
    ({"prompt": "x", "response": "y", "score": 11}, "outside 0..10"),
    ({"prompt": "x", "response": "y", "score": "high"}, "integer 0..10"),
    ({"prompt": "x", "response": "y"}, "missing column 'score'"),
    ('[1, 2]', "JSON object"),
])
def test_a_bad_judge_row_names_the_file_and_line(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "judge.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(SeedError) as e:
        load_judge(str(path))
    assert f"{path}:3" in str(e.value) and needle in str(e.value)


def test_empty_seed_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(SeedError, match="empty"):
        load_sft(str(path))


def test_parquet_and_local_dataset_folder(tmp_path):
    table = pa.Table.from_pylist([{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)])
    pq.write_table(table, tmp_path / "sft.parquet")
    assert [s.prompt for s in load_sft(str(tmp_path / "sft.parquet"))] == [f"p{i}" for i in range(5)]
    folder = tmp_path / "hub_like"
    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    # A folder laid out like a Hub dataset goes through datasets.load_dataset, as a Hub id would.
    assert len(load_sft(str(folder))) == 5


def test_unreachable_hub_dataset_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SeedError, match="Hub dataset id"):
        load_sft("no-such-org/no-such-dataset")


def test_daring_anteater_adapter(tmp_path):
    rows = [
        {"system": "", "mask": "User", "conversations": [
            {"from": "User", "value": "What is 2+2?"}, {"from": "Assistant", "value": "4."},
            {"from": "User", "value": "And times 3?"}, {"from": "Assistant", "value": "12."}]},
        {"conversations": [{"from": "User", "value": "Name a colour."}, {"from": "Assistant", "value": "Teal."}]},
    ]
    seeds = load_sft(str(write_jsonl(tmp_path / "da.jsonl", rows)), fmt="daring_anteater")
    assert [(s.prompt, s.response) for s in seeds] == [
        ("What is 2+2?", "4."), ("What is 2+2?\n\n4.\n\nAnd times 3?", "12."), ("Name a colour.", "Teal.")]
    bad = [{"conversations": [{"from": "Assistant", "value": "hello"}]}]
    with pytest.raises(SeedError, match=r"da_bad.jsonl:1.*no user turn"):
        load_sft(str(write_jsonl(tmp_path / "da_bad.jsonl", bad)), fmt="daring_anteater")


def test_helpsteer2_adapter(tmp_path):
    rows = [{"prompt": "Explain rain.", "response": f"answer {h}", "helpfulness": h, "correctness": h,
             "coherence": 4, "complexity": 1, "verbosity": 2} for h in range(5)]
    seeds = load_judge(str(write_jsonl(tmp_path / "hs2.jsonl", rows)), fmt="helpsteer2")
    assert [s.score for s in seeds] == [0, 2, 5, 8, 10]
    rows[2]["helpfulness"] = 7
    with pytest.raises(SeedError, match=r"hs2.jsonl:3.*helpfulness"):
        load_judge(str(write_jsonl(tmp_path / "hs2.jsonl", rows)), fmt="helpsteer2")
