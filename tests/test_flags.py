"""Each setting is declared once (its `ScorerSettings` field): the flags, their choices, the checks,
the layers and the protocol's flag-to-settings table are derived from it and stay complete."""
import dataclasses

import pytest

from clip_benchmark_diffusion.integration.flags import FLAG_SETTINGS, diffusion_argument_parser
from clip_benchmark_diffusion.settings import SETTING_CHOICES, SETTING_LAYERS, ScorerSettings


def test_every_setting_but_the_seed_and_extra_has_a_flag():
    covered = {field for fields in FLAG_SETTINGS.values() for field in fields}
    names = {field.name for field in dataclasses.fields(ScorerSettings)}
    assert names - covered == {"seed", "extra"}  # the seed is clip_benchmark's own --seed


def test_a_flag_offers_exactly_its_settings_choices_and_the_settings_refuse_others():
    actions = {action.dest: action for action in diffusion_argument_parser()._actions}
    for dest, fields in FLAG_SETTINGS.items():
        if len(fields) == 1 and fields[0] in SETTING_CHOICES:
            assert tuple(actions[dest].choices) == SETTING_CHOICES[fields[0]]
    assert set(SETTING_CHOICES) == {"timesteps", "objective", "loss", "templates", "dtype", "compile",
                                    "sigma_distribution", "strategy", "ttest_variance"}
    with pytest.raises(ValueError, match=r"loss must be one of \('l2', 'l1', 'huber'\), got 'l3'"):
        ScorerSettings(loss="l3")


def test_the_layers_are_derived_from_the_fields():
    assert {layer: set(names) for layer, names in SETTING_LAYERS.items()} == {
        "allocation": {"strategy", "draws", "delta", "look_growth", "ttest_p", "min_draws", "round_draws",
                       "ttest_variance", "schedule_keep", "schedule_draws", "prefilter_model",
                       "prefilter_pretrained", "prefilter_k", "max_calls"},
        "speed": {"batch_size", "channels_last", "compile"},
        "load": {"dtype", "resolution", "drop_t5", "guidance"},
        "adapter": {"max_candidates"},
    }
