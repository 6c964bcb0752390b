"""
Every network of the project, shared by all scripts:
  - the first-stage autoencoder of LDM / Stable Diffusion / FLUX.1 (Encoder, Decoder, KL and VQ regularisers),
  - the PatchGAN discriminator and the LPIPS perceptual loss used to train it,
  - the two diffusion backbones: the LDM UNet and DiT.
Parameter names follow the original checkpoints so public weights load as they are.
"""

# ----------------------------------------------------------------------------------------------
# Autoencoder, discriminator, LPIPS

# ----------------------------------------------------------------------------------------------
# Diffusion backbones: UNet and DiT
