"""One dataset's run builds its settings once and resolves `--pretrained` once, before any compute;
the load gets both from the run (issue 22)."""
import os

from test_records import eval_args, run_in_process


def test_settings_are_built_once_and_the_load_gets_the_located_folder(tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                                      capsys, monkeypatch):
    from clip_benchmark_diffusion import checkpoints
    from clip_benchmark_diffusion.integration import run

    os.symlink(tiny_epsilon_pipeline, tmp_path / "model")
    monkeypatch.setenv("HOME", str(tmp_path))  # `~/model`: a name that only `locate` turns into the folder
    located, built = [], []
    original_locate, original_settings = checkpoints.locate, run.settings_for_dataset

    def locate(pretrained, *args, **kwargs):
        located.append(pretrained)
        return original_locate(pretrained, *args, **kwargs)

    def settings_for_dataset(*args, **kwargs):
        built.append(args)
        return original_settings(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "locate", locate)
    monkeypatch.setattr(run, "settings_for_dataset", settings_for_dataset)
    code, err = run_in_process(eval_args("~/model", tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert len(built) == 1
    folder = str(tmp_path / "model")
    assert located == ["~/model"]  # located once, before any compute; the load takes what it found
    record = next(tmp_path.rglob("*.diffusion.jsonl")).read_text()
    assert folder in record.splitlines()[0]  # the run loaded that folder
