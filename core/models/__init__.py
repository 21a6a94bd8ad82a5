"""Stage 2, models: the model description (bands, classes, statistics, stride) and loading
the user's model safely (state dict + sidecar, ``torch.export`` archive, ONNX, ``nn.Module``)."""
