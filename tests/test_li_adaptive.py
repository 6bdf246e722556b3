"""The glue that runs Li et al.'s `eval_prob_adaptive` on our model and images, without their repository:
a stand-in module with their function's signature checks what it is handed."""
import textwrap

import pytest
import torch

from clip_benchmark_diffusion.benchmarks import li_adaptive
from clip_benchmark_diffusion.checkpoints import load_backend

FAKE_LI = '''
import torch
seen = []

def eval_prob_adaptive(unet, latent, text_embeds, scheduler, args, latent_size=64, all_noise=None):
    """Scores every prompt once at t=500 with the first noise, as their eval_error does."""
    seen.append(dict(latent=latent.clone(), noise=all_noise.clone(), latent_size=latent_size, args=args))
    t = torch.tensor([500])
    alpha = scheduler.alphas_cumprod[t]
    noised = latent * alpha ** 0.5 + all_noise[:1] * (1 - alpha) ** 0.5
    errors = []
    for i in range(len(text_embeds)):
        prediction = unet(noised, t, encoder_hidden_states=text_embeds[i:i + 1]).sample
        errors.append(float(((prediction - all_noise[:1]) ** 2).mean()))
    data = {i: dict(t=t, pred_errors=torch.tensor([e])) for i, e in enumerate(errors)}
    return min(range(len(errors)), key=errors.__getitem__), data
'''


def fake_checkout(root, source=FAKE_LI):
    (root / "diffusion").mkdir(parents=True)
    (root / "diffusion" / "models.py").write_text("")
    (root / "diffusion" / "datasets.py").write_text("")
    (root / "eval_prob_adaptive.py").write_text(textwrap.dedent(source))
    return str(root)


def test_a_folder_that_is_not_their_checkout_is_refused_in_one_line(tmp_path):
    (tmp_path / "eval_prob_adaptive.py").write_text("")  # the script alone is not their repository
    with pytest.raises(SystemExit) as error:
        li_adaptive.import_li(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "not a checkout of Li et al.'s diffusion-classifier" in message
    assert "diffusion/models.py" in message and "eval_prob_adaptive.py" not in message.split("no ")[-1]


def test_placeholders_for_their_unused_imports_do_not_outlive_the_import(tmp_path):
    """An empty `pandas` left in sys.modules breaks scikit-learn (and clip_benchmark's metrics) later on."""
    import importlib.util
    import sys

    li_adaptive.import_li(fake_checkout(tmp_path / "li"))
    for name in li_adaptive.UNUSED_IMPORTS:
        if importlib.util.find_spec(name) is None:
            assert name not in sys.modules


def test_their_keep_lists_are_checked_before_any_model_call():
    with pytest.raises(SystemExit, match="keeps 1 class"):
        li_adaptive.li_args([20, 5], [10, 50], batch_size=8)
    args = li_adaptive.li_args([5, 1], [2, 4], batch_size=8)
    assert (args.to_keep, args.n_samples, args.n_trials, args.dtype, args.version) == ([5, 1], [2, 4], 1, "float32",
                                                                                        "2-0")


def test_inputs_are_our_backends_latents_states_and_schedule(tiny_epsilon_pipeline):
    backend = load_backend(tiny_epsilon_pipeline)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    latents, text_embeds, scheduler = li_adaptive.li_inputs(backend, pixels, ["a cat", "a dog", "a bird"])
    assert torch.equal(latents, backend.encode_images(pixels))
    assert torch.equal(text_embeds, backend.encode_prompts(["a cat", "a dog", "a bird"]).states)
    assert type(scheduler).__name__ == "EulerDiscreteScheduler"  # the class their get_sd_model loads
    assert torch.allclose(scheduler.alphas_cumprod, backend.pipe.scheduler.alphas_cumprod)


def test_run_hands_their_function_our_model_and_counts_its_calls(tiny_epsilon_pipeline, tmp_path):
    module = li_adaptive.import_li(fake_checkout(tmp_path / "li"))
    assert module.__file__.startswith(str(tmp_path))
    backend = load_backend(tiny_epsilon_pipeline)
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    candidates = [["a cat", "a photo of a cat"], ["a dog", "a photo of a dog"]]
    args = li_adaptive.li_args([1], [4], batch_size=8)
    correct, calls, seconds = li_adaptive.run(module, backend, pixels, torch.tensor([0, 1, 0]), candidates, args,
                                              seed=3)
    assert calls.tolist() == [2, 2, 2]  # one error per prompt: their data's pred_errors are what is counted
    assert len(seconds) == 3 and (seconds > 0).all()
    assert module.device == "cpu"
    seen = module.seen[-3:]
    assert [s["latent_size"] for s in seen] == [backend.encode_images(pixels).shape[-1]] * 3
    assert torch.equal(seen[1]["latent"], backend.encode_images(pixels)[1:2])
    assert seen[0]["noise"].shape == (4, *seen[0]["latent"].shape[1:])  # max(n_samples) noises
    assert not torch.equal(seen[0]["noise"], seen[1]["noise"])  # each image its own noise ...
    again = li_adaptive.run(module, backend, pixels, torch.tensor([0, 1, 0]), candidates, args, seed=3)
    assert torch.equal(module.seen[-3]["noise"], seen[0]["noise"])  # ... seeded, so a rerun repeats it
    assert again[0].tolist() == correct.tolist()
    # the prediction is the prompt with the smallest error: recompute it by hand for image 0
    latent, noise = seen[0]["latent"], seen[0]["noise"][:1]
    alpha = backend.pipe.scheduler.alphas_cumprod[500]
    noised = latent * alpha ** 0.5 + noise * (1 - alpha) ** 0.5
    states = backend.encode_prompts(["a cat", "a dog"]).states
    with torch.no_grad():
        errors = [float(((backend.denoiser(noised, torch.tensor([500]), encoder_hidden_states=states[i:i + 1]).sample
                          - noise) ** 2).mean()) for i in range(2)]
    assert bool(correct[0]) == (errors[0] < errors[1])
