"""PI0 in PyTorch for RIPT-VLA fine-tuning; the model lives in `openpi_pytorch_ori.pi0`."""
