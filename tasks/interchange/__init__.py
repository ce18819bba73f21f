"""Models leaving and entering in other tools' formats: diffusers folders and the original
code's layout (Stable Diffusion's single files)."""
