"""Reading a bulk job's inputs: which files count, and the columns (content hash included) a record becomes."""

import numpy as np
import pytest

from bulk.sources import document_columns, input_files
from store.errors import InvalidArgument


def test_a_directory_stands_for_its_jsonl_and_parquet_files(tmp_path):
    for name in ("b.jsonl", "a.json", "nested/c.parquet", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert input_files([tmp_path]) == ([tmp_path / "a.json", tmp_path / "b.jsonl"], [tmp_path / "nested" / "c.parquet"])


@pytest.mark.parametrize("name", ["notes.txt", "missing.jsonl"])
def test_a_named_file_must_exist_and_be_jsonl_or_parquet(tmp_path, name):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(InvalidArgument, match=name):
        input_files([tmp_path / name])


def test_the_content_hash_changes_with_text_and_metadata_but_not_with_key_order():
    columns = document_columns(
        [
            {"id": 1, "text": "Paris.", "metadata": {"a": 1, "b": [1, 2]}},
            {"id": 2, "text": "Paris.", "metadata": '{"b": [1, 2], "a": 1}'},  # metadata as a JSON string, as Parquet often has it
            {"id": 3, "text": "Paris!", "metadata": {"a": 1, "b": [1, 2]}},
            {"id": 4, "text": "Paris.", "metadata": {"a": np.int64(2), "b": np.array([1, 2])}},  # numpy values, as from Parquet
        ]
    )
    assert list(columns["id"]) == ["1", "2", "3", "4"]
    assert columns["metadata"][0] == columns["metadata"][1] == '{"a":1,"b":[1,2]}'
    hashes = list(columns["content_hash"])
    assert hashes[0] == hashes[1] and len(set(hashes)) == 3


@pytest.mark.parametrize("record", [{"text": "no id"}, {"id": "x"}, {"id": "x", "text": "  "}])
def test_a_record_without_id_or_text_is_refused(record):
    with pytest.raises(InvalidArgument, match="needs an id and a non-empty text"):
        document_columns([record])
