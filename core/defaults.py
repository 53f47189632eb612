"""The embedded default every verb starts from, in one place: MobileNetV2 (ImageNet weights that install
offline) on the 20 bundled ImageNet images."""

DEFAULT_MODEL = "mobilenet_v2"
DEFAULT_DATA = "imagenet_sample"
