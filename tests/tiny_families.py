"""Tiny random pipelines of every supported family, built from configs and saved as diffusers folders.

All parts are real (tokenizers included: CLIP's BPE from the package's bundled vocabulary, a T5
Unigram tokenizer from a small local vocabulary), so loading goes through each pipeline's own
`from_pretrained`. Random weights: they check plumbing and math, never accuracy.
"""
from __future__ import annotations

import os

import torch

CLIP_LENGTH = 16
#: what the public T5 tokenizers declare (the pipelines pad to their own, shorter defaults)
T5_LENGTH = 512
T5_WORDS = ("a photo of the cat dog bird tench goldfish great white shark bad many small large and with in on "
            "picture rendering").split()


def t5_tokenizer(length: int = T5_LENGTH):
    """A genuine T5 tokenizer (Unigram pieces with scores, no sentencepiece file)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -5.0) for word in T5_WORDS]
    pieces += [(letter, -8.0) for letter in "abcdefghijklmnopqrstuvwxyz.,"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=length)


def t5_encoder(tokenizer, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))


def clip_tokenizer():
    from clip_benchmark_diffusion.reference.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(model_max_length=CLIP_LENGTH)


def clip_encoder(tokenizer, width: int, projection: int = 0):
    """CLIPTextModel, or CLIPTextModelWithProjection when `projection` > 0."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size + len(tokenizer.get_added_vocab()), hidden_size=width,
                            intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=CLIP_LENGTH, projection_dim=projection or width,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def vae(latent_channels: int = 4, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=16, **config)


def _save(pipeline, folder: str, **kwargs) -> str:
    os.makedirs(folder, exist_ok=True)
    pipeline.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def build_sdxl(folder: str) -> str:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
                                addition_time_embed_dim=4, projection_class_embeddings_input_dim=16 + 6 * 4,
                                transformer_layers_per_block=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", steps_offset=1)
    pipeline = StableDiffusionXLPipeline(vae=vae(scaling_factor=0.13025, force_upcast=True),
                                         text_encoder=clip_encoder(tokenizer, 16),
                                         text_encoder_2=clip_encoder(tokenizer, 16, projection=16),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                         add_watermarker=False)
    return _save(pipeline, folder)


def build_sd3(folder: str, with_t5: bool = True) -> str:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=clip_encoder(tokenizer, 16, projection=16), tokenizer=tokenizer,
        text_encoder_2=clip_encoder(tokenizer, 16, projection=16), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(t5_tok) if with_t5 else None, tokenizer_3=t5_tok if with_t5 else None)
    return _save(pipeline, folder)


def build_flux(folder: str, guidance: bool = True) -> str:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(scheduler=scheduler,
                            vae=vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                    use_post_quant_conv=False),
                            text_encoder=clip_encoder(tokenizer, 16), tokenizer=tokenizer,
                            text_encoder_2=t5_encoder(t5_tok), tokenizer_2=t5_tok, transformer=transformer)
    return _save(pipeline, folder)


def build_pixart(folder: str, sigma: bool = False) -> str:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    t5_tok = t5_tokenizer()
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4, out_channels=8,
                                           cross_attention_dim=24, norm_num_groups=8)
    pipeline_class = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipeline = pipeline_class(tokenizer=t5_tok, text_encoder=t5_encoder(t5_tok), vae=vae(), transformer=transformer,
                              scheduler=DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001,
                                                                    beta_end=0.02))
    return _save(pipeline, folder)


def build_dit(folder: str) -> str:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=8)
    pipeline = DiTPipeline(transformer=transformer, vae=vae(),
                           scheduler=DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02))
    return _save(pipeline, folder)


def build_if(folder: str) -> str:
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    t5_tok = t5_tokenizer(length=77)
    unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                              prediction_type="epsilon", thresholding=True, clip_sample=True)
    pipeline = IFPipeline(tokenizer=t5_tok, text_encoder=t5_encoder(t5_tok), unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    return _save(pipeline, folder)


def qwen_tokenizer(words=T5_WORDS, vocab_size: int = 400):
    """A byte-level BPE tokenizer of the Qwen2 kind with the chat-template tokens, trained here on a
    few words (not on the template's system prompt: it must stay longer than the 34 tokens the
    pipeline drops)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.train_from_iterator([" ".join(words)] * 4 + ["a photo of a {}.".format(w) for w in words], trainer)
    state = __import__("json").loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, model_max_length=1024)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")])
    return tokenizer


def qwen25_vl_encoder(tokenizer, width: int = 16):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = len(tokenizer) + 3
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": width, "intermediate_size": width, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "rope_theta": 1000000.0, "vocab_size": vocab,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.eos_token_id,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": width},
        hidden_size=width, vocab_size=vocab, vision_start_token_id=vocab - 3, vision_end_token_id=vocab - 2,
        vision_token_id=vocab - 1)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_qwenimage(folder: str) -> str:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, \
        QwenImageTransformer2DModel

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                 latents_std=[1.5, 0.5, 2.0, 1.0])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192,
                                                time_shift_type="exponential")
    pipeline = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=qwen25_vl_encoder(tokenizer),
                                 tokenizer=tokenizer, transformer=transformer)
    return _save(pipeline, folder)


#: a chat template of the Qwen kind (`{"role", "content"}` messages, content a string or a list of parts)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for part in m['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def flux2_parts(text_width: int, bn_seed: int = 3):
    """FLUX.2's transformer (16 = 4 latent channels x 2x2 patch), VAE with batch-norm statistics set, scheduler."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2,
                                          joint_attention_dim=3 * text_width, timestep_guidance_channels=256,
                                          axes_dims_rope=[4, 4, 4, 4])
    vae = AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                             latent_channels=4, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False)
    generator = torch.Generator().manual_seed(bn_seed)
    vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=generator) * 0.1)
    vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape, generator=generator) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096,
                                                time_shift_type="exponential")
    return transformer, vae, scheduler


def build_flux2_klein(folder: str) -> str:
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    width = 8
    text_encoder = Qwen3ForCausalLM(Qwen3Config(hidden_size=width, intermediate_size=8, num_hidden_layers=27,
                                                num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                                vocab_size=len(tokenizer), max_position_embeddings=512,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)).eval()
    transformer, vae, scheduler = flux2_parts(width)
    pipeline = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                  transformer=transformer)
    return _save(pipeline, folder)


def build_flux2(folder: str) -> str:
    from diffusers import Flux2Pipeline
    from transformers import AddedToken, Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, \
        PixtralProcessor

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    tokenizer.add_tokens([AddedToken(t, special=True) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]")])
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tokenizer, patch_size=6,
                                 chat_template=CHAT_TEMPLATE)
    width, vocab = 8, len(tokenizer)
    config = Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": vocab, "hidden_size": width, "intermediate_size": 8,
                     "max_position_embeddings": 1024, "num_attention_heads": 2, "num_hidden_layers": 30,
                     "num_key_value_heads": 1, "head_dim": 4, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                     "sliding_window": None, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "intermediate_size": 16, "image_size": 30, "patch_size": 6, "num_channels": 3},
        image_seq_length=4, vision_feature_layer=-1, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"))
    text_encoder = Mistral3ForConditionalGeneration(config).eval()
    transformer, vae, scheduler = flux2_parts(width)
    pipeline = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=processor,
                             transformer=transformer)
    return _save(pipeline, folder)


def build_z_image(folder: str) -> str:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    text_encoder = Qwen3Model(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer),
                                          max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)).eval()
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1,
                                           n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                                           cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
                                           axes_lens=[256, 32, 32])
    with torch.no_grad():  # created with torch.empty: fixed so a padded token is never NaN
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipeline = ZImagePipeline(scheduler=scheduler, vae=vae(16, scaling_factor=0.3611, shift_factor=0.1159),
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    return _save(pipeline, folder)


def gemma_tokenizer(words=T5_WORDS, vocab_size: int = 300):
    """A Gemma tokenizer (BPE on "▁"-joined words, byte fallback) trained here on a few words."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE())
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list("▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:'-()"))
    bpe.train_from_iterator(["▁".join(words)] * 4 + ["▁" + w for w in words], trainer)
    state = __import__("json").loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return GemmaTokenizer(vocab=state["vocab"], merges=merges, model_max_length=1024)


def gemma2_encoder(tokenizer, width: int = 8):
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                    max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()


def build_sana(folder: str) -> str:
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    tokenizer = gemma_tokenizer()
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                                         attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                         cross_attention_dim=8, caption_channels=8, sample_size=16)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=[1, 1], downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)
    scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
    pipeline = SanaPipeline(tokenizer=tokenizer, text_encoder=gemma2_encoder(tokenizer), vae=vae,
                            transformer=transformer, scheduler=scheduler)
    return _save(pipeline, folder)


def build_lumina2(folder: str) -> str:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(0)
    tokenizer = gemma_tokenizer()
    transformer = Lumina2Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=1,
                                            num_refiner_layers=1, num_attention_heads=1, num_kv_heads=1,
                                            multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 2, 2),
                                            axes_lens=(300, 32, 32), cap_feat_dim=8)
    # the pipeline assumes 8 pixels per latent cell: four blocks
    vae_8x = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4,
                           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                           layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=0.3611,
                           shift_factor=0.1159)
    pipeline = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0),
                               vae=vae_8x, text_encoder=gemma2_encoder(tokenizer), tokenizer=tokenizer)
    return _save(pipeline, folder)


def build_hidream(folder: str) -> str:
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer(length=128)
    llama_tok = qwen_tokenizer()
    transformer = HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                                 num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                                                 caption_channels=[32, 16], text_emb_dim=32, num_routed_experts=4,
                                                 num_activated_experts=2, axes_dims_rope=(4, 2, 2),
                                                 max_resolution=(16, 16), llama_layers=(0, 1))

    def long_clip():  # HiDream's CLIP encoders read 128 tokens (the pipeline pads them to 128)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=tokenizer.vocab_size + len(tokenizer.get_added_vocab()), hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128, projection_dim=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tok), hidden_size=16, intermediate_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=256, eos_token_id=llama_tok.eos_token_id,
                                         pad_token_id=llama_tok.pad_token_id)).eval()
    pipeline = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=long_clip(), tokenizer=tokenizer, text_encoder_2=long_clip(), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(t5_tok), tokenizer_3=t5_tok, text_encoder_4=llama, tokenizer_4=llama_tok,
        transformer=transformer)
    return _save(pipeline, folder)


def build_chroma(folder: str) -> str:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    t5_tok = t5_tokenizer()
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
                                           approximator_hidden_dim=32, approximator_layers=1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = ChromaPipeline(scheduler=scheduler, vae=vae(scaling_factor=0.3611, shift_factor=0.1159,
                                                           use_quant_conv=False, use_post_quant_conv=False),
                              text_encoder=t5_encoder(t5_tok), tokenizer=t5_tok, transformer=transformer)
    return _save(pipeline, folder)


def build_cogview4(folder: str) -> str:
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    tokenizer.padding_side = "left"
    text_encoder = GlmModel(GlmConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                      max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)).eval()
    transformer = CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                             attention_head_dim=4, num_attention_heads=4, text_embed_dim=16,
                                             time_embed_dim=8, condition_dim=4, sample_size=8, rope_axes_dim=(4, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    pipeline = CogView4Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae(scaling_factor=0.8),
                                transformer=transformer, scheduler=scheduler)
    return _save(pipeline, folder)


def build_hunyuanimage(folder: str) -> str:
    from diffusers import AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline, \
        HunyuanImageTransformer2DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    transformer = HunyuanImageTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=8, num_layers=1, num_single_layers=1,
                                                 num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16,
                                                 text_embed_2_dim=16, rope_axes_dim=(4, 4))
    vae_8x = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=4,
                                       block_out_channels=(32, 32, 32, 32), layers_per_block=1, scaling_factor=0.476986,
                                       spatial_compression_ratio=8, sample_size=32)
    byt5 = T5EncoderModel(T5Config(d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=32, vocab_size=384,
                                   feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
                                   use_cache=False, tie_word_embeddings=False))
    pipeline = HunyuanImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae_8x,
                                    text_encoder=qwen25_vl_encoder(tokenizer), tokenizer=tokenizer,
                                    text_encoder_2=byt5, tokenizer_2=ByT5Tokenizer(), transformer=transformer,
                                    guider=None, ocr_guider=None)
    return _save(pipeline, folder)


BUILDERS = {"sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux, "pixart": build_pixart, "dit": build_dit,
            "if": build_if, "qwenimage": build_qwenimage,
            "flux2": build_flux2, "flux2-klein": build_flux2_klein,
            "z-image": build_z_image, "sana": build_sana, "lumina2": build_lumina2,
            "hidream": build_hidream, "chroma": build_chroma,
            "cogview4": build_cogview4, "hunyuanimage": build_hunyuanimage}
