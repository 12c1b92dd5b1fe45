"""One entry per dataset: where it lives, where it comes from, how it is named and prompted.

Adding a dataset = adding one ``DatasetSpec`` to ``SPECS`` (and, for an odd layout, a reader
function). Nothing registers itself on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from functools import partial

from cpbench.data import caption_splits, readers
from cpbench.data.fetch import Source


@dataclass(frozen=True)
class Expected:
    train: int | None = None
    val: int | None = None
    test: int | None = None
    classes: int | None = None
    base: int | None = None
    new: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str                       # CLI key, e.g. "caltech101"
    dassl_name: str                 # CoOp/Dassl class name, e.g. "Caltech101"
    folder: str                     # folder under the data root (CoOp layout)
    image_dir: str                  # folder (under ``folder``) that split paths are relative to
    template: str                   # zero-shot template, "{}" = class name
    sources: tuple[Source, ...] = ()
    split_file: str | None = None   # CoOp split json inside ``folder``
    expected: Expected = field(default_factory=Expected)
    val_is_test: bool = False       # ImageNet: the official val set is the test set
    kind: str = "download"          # download | generated | custom | manual
    read_split: Callable | None = None  # for layouts without a split json: (dataset_dir) -> Split
    notes: str = ""
    # classification (a Split of labelled images) | retrieval (an image-caption dataset:
    # ``read_split`` returns a caption_splits.CaptionSplit; see cpbench/data/captions.py)
    task: str = "classification"


CALTECH101 = DatasetSpec(
    name="caltech101",
    dassl_name="Caltech101",
    folder="caltech-101",
    image_dir="101_ObjectCategories",
    template="a photo of a {}.",
    split_file="split_zhou_Caltech101.json",
    sources=(
        Source(
            filename="caltech-101.zip",
            urls=(
                "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                "https://huggingface.co/datasets/HuggingFaceM4/Caltech-101/resolve/main/caltech-101.zip",
            ),
            md5="3138e1922a9193bfa496528edbbc45d0",
            extract=True,
            inner="caltech-101/101_ObjectCategories.tar.gz",
        ),
        Source(
            filename="split_zhou_Caltech101.json",
            urls=("https://drive.google.com/file/d/1hyarUivQE36mY6jSomru6Fjd-JzwcCzN/view?usp=sharing",),
            sha256="43ab95e88d2f6a32a11c4f8dc9f822c534e822f3dbbde2e248af5432d771a6fc",
        ),
    ),
    expected=Expected(train=4128, val=1649, test=2465, classes=100, base=50, new=50),
)



def _gd(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


def _split_source(dassl: str, file_id: str, sha256: str | None = None) -> Source:
    return Source(filename=f"split_zhou_{dassl}.json", urls=(_gd(file_id),), sha256=sha256)


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_IMAGENET_MANUAL = (
    "ImageNet cannot be downloaded automatically (licence). Get ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from https://image-net.org, then arrange <root>/imagenet/images/train/<wnid>/*.JPEG "
    "and <root>/imagenet/images/val/<wnid>/*.JPEG (the val tar is flat: sort it into wnid folders, e.g. with "
    "valprep.sh) and run `cpbench prepare imagenet` again; classnames.txt is built offline")

OXFORD_PETS = DatasetSpec(
    name="oxford_pets", dassl_name="OxfordPets", folder="oxford_pets", image_dir="images",
    template="a photo of a {}, a type of pet.", split_file="split_zhou_OxfordPets.json",
    sources=(
        Source("images.tar.gz", (f"{_VGG}/pets/data/images.tar.gz",), md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", extract=True),
        Source("annotations.tar.gz", (f"{_VGG}/pets/data/annotations.tar.gz",), md5="95a8c909bbe2e81eed6a22bccdf3f68f",
               extract=True),
        _split_source("OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    ),
    expected=Expected(train=2944, val=736, test=3669, classes=37, base=19, new=18),
)

STANFORD_CARS = DatasetSpec(
    name="stanford_cars", dassl_name="StanfordCars", folder="stanford_cars", image_dir="",
    template="a photo of a {}.", split_file="split_zhou_StanfordCars.json",
    notes="the official Stanford hosts are dead; without a mirror use --from with the four files",
    sources=(
        Source("cars_train.tgz", ("http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",), extract=True),
        Source("cars_test.tgz", ("http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",), extract=True),
        Source("car_devkit.tgz", ("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",
                                  "https://github.com/pytorch/vision/files/11644847/car_devkit.tgz"), extract=True,
               optional=True),
        Source("cars_test_annos_withlabels.mat",
               ("http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",), optional=True),
        _split_source("StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
    ),
    expected=Expected(train=6509, val=1635, test=8041, classes=196, base=98, new=98),
)

OXFORD_FLOWERS = DatasetSpec(
    name="oxford_flowers", dassl_name="OxfordFlowers", folder="oxford_flowers", image_dir="jpg",
    template="a photo of a {}, a type of flower.", split_file="split_zhou_OxfordFlowers.json",
    sources=(
        Source("102flowers.tgz", (f"{_VGG}/flowers/102/102flowers.tgz",), md5="52808999861908f626f3c1f4e79d11fa",
               extract=True),
        Source("imagelabels.mat", (f"{_VGG}/flowers/102/imagelabels.mat",), md5="e0620be6f572b9609742df49c70aed4d",
               optional=True),
        Source("cat_to_name.json", (_gd("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"),), optional=True),
        _split_source("OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    ),
    expected=Expected(train=4093, val=1633, test=2463, classes=102, base=51, new=51),
)

FOOD101 = DatasetSpec(
    name="food101", dassl_name="Food101", folder="food-101", image_dir="images",
    template="a photo of {}, a type of food.", split_file="split_zhou_Food101.json",
    sources=(
        Source("food-101.tar.gz", ("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
               md5="85eeb15f3717b99a5da872d97d918f87", extract=True, strip="food-101"),
        _split_source("Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    ),
    expected=Expected(train=50500, val=20200, test=30300, classes=101, base=51, new=50),
)

FGVC_AIRCRAFT = DatasetSpec(
    name="fgvc_aircraft", dassl_name="FGVCAircraft", folder="fgvc_aircraft", image_dir="images",
    template="a photo of a {}, a type of aircraft.", read_split=readers.read_fgvc_aircraft,
    sources=(
        Source("fgvc-aircraft-2013b.tar.gz", (f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
               extract=True, strip="fgvc-aircraft-2013b/data"),
    ),
    expected=Expected(train=3334, val=3333, test=3333, classes=100, base=50, new=50),
)

SUN397 = DatasetSpec(
    name="sun397", dassl_name="SUN397", folder="sun397", image_dir="SUN397",
    template="a photo of a {}.", split_file="split_zhou_SUN397.json",
    notes="the Princeton and MIT hosts 404; use --from with SUN397.tar.gz",
    sources=(
        Source("SUN397.tar.gz", ("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
               md5="8ca2778205c41d23104230ba66911c7a", extract=True),
        Source("Partitions.zip", ("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",),
               optional=True),
        _split_source("SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    ),
    expected=Expected(train=15880, val=3970, test=19850, classes=397, base=199, new=198),
)

DTD = DatasetSpec(
    name="dtd", dassl_name="DescribableTextures", folder="dtd", image_dir="images",
    template="{} texture.", split_file="split_zhou_DescribableTextures.json",
    sources=(
        Source("dtd-r1.0.1.tar.gz", (f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz",),
               md5="fff73e5086ae6bdbea199a49dfb8a4c1", extract=True, strip="dtd"),
        _split_source("DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    ),
    expected=Expected(train=2820, val=1128, test=1692, classes=47, base=24, new=23),
)

EUROSAT = DatasetSpec(
    name="eurosat", dassl_name="EuroSAT", folder="eurosat", image_dir="2750",
    template="a centered satellite photo of {}.", split_file="split_zhou_EuroSAT.json",
    sources=(
        # the torchgeo mirror first: the DFKI host's certificate expired
        Source("EuroSAT.zip", (
            "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
            "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
        ), md5="c8fa014336c82ac7804f0398fcb19387", extract=True),
        _split_source("EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    ),
    expected=Expected(train=13500, val=5400, test=8100, classes=10, base=5, new=5),
)

UCF101 = DatasetSpec(
    name="ucf101", dassl_name="UCF101", folder="ucf101", image_dir="UCF-101-midframes",
    template="a photo of a person doing {}.", split_file="split_zhou_UCF101.json",
    sources=(
        Source("UCF-101-midframes.zip", (_gd("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),), extract=True),
        _split_source("UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    ),
    expected=Expected(train=7639, val=1898, test=3783, classes=101, base=51, new=50),
)

IMAGENET = DatasetSpec(
    name="imagenet", dassl_name="ImageNet", folder="imagenet", image_dir="images",
    template="a photo of a {}.", read_split=readers.read_imagenet, val_is_test=True, kind="manual",
    notes=_IMAGENET_MANUAL,
    expected=Expected(train=1281167, val=50000, test=50000, classes=1000, base=500, new=500),
)

IMAGENETV2 = DatasetSpec(
    name="imagenetv2", dassl_name="ImageNetV2", folder="imagenetv2",
    image_dir="imagenetv2-matched-frequency-format-val", template="a photo of a {}.",
    read_split=readers.read_imagenetv2,
    sources=(
        Source("imagenetv2-matched-frequency.tar.gz", (
            "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
            "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
        ), extract=True),
    ),
    expected=Expected(train=0, val=0, test=10000, classes=1000),
)

IMAGENET_SKETCH = DatasetSpec(
    name="imagenet_sketch", dassl_name="ImageNetSketch", folder="imagenet-sketch", image_dir="images",
    template="a photo of a {}.", read_split=readers.read_imagenet_sketch,
    sources=(
        Source("ImageNet-Sketch.zip", (_gd("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),), extract=True,
               strip="sketch", dest="images"),
    ),
    expected=Expected(train=0, val=0, test=50889, classes=1000),
)

IMAGENET_A = DatasetSpec(
    name="imagenet_a", dassl_name="ImageNetA", folder="imagenet-adversarial", image_dir="imagenet-a",
    template="a photo of a {}.", read_split=readers.read_imagenet_a,
    sources=(
        Source("imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",), extract=True),
    ),
    expected=Expected(train=0, val=0, test=7500, classes=200),
)

IMAGENET_R = DatasetSpec(
    name="imagenet_r", dassl_name="ImageNetR", folder="imagenet-rendition", image_dir="imagenet-r",
    template="a photo of a {}.", read_split=readers.read_imagenet_r,
    sources=(
        Source("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",), extract=True),
    ),
    expected=Expected(train=0, val=0, test=30000, classes=200),
)

IMAGENET_FAMILY = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
WNID_SUBSETS = ("imagenet_a", "imagenet_r")  # 200-class, relabelled 0..199 over sorted wnids

# The papers' dataset groups, in their tables' order: CoOp/CoCoOp's eleven datasets (base-to-new and
# few-shot; ImageNet is the cross-dataset source, the other ten its targets) and the ImageNet
# variants of domain generalisation.
COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
IMAGENET_VARIANTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

BUILTIN = (IMAGENET, CALTECH101, OXFORD_PETS, STANFORD_CARS, OXFORD_FLOWERS, FOOD101, FGVC_AIRCRAFT, SUN397, DTD,
           EUROSAT, UCF101, IMAGENETV2, IMAGENET_SKETCH, IMAGENET_A, IMAGENET_R)


# --------------------------------------------------------------------------- image-caption datasets
# Few-shot image-text retrieval (CPL). Karpathy's caption files come from his page as one zip
# (no published checksum: content-verified against the expected split sizes and the images they
# name). Flickr30k's images are given out by its authors after a request form (Flickr terms), so
# they come with --from; MSCOCO's val2014 images (CPL uses only val2014: its few-shot pool is
# Karpathy's val split and the test split lies there too) download from cocodataset.org.

_KARPATHY = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"

FLICKR30K = DatasetSpec(
    name="flickr30k", dassl_name="flickr30k", folder="flickr30k", image_dir="flickr30k-images", template="{}",
    task="retrieval", kind="manual",
    read_split=partial(caption_splits.read_karpathy, annotations="dataset_flickr30k.json", pool="train", test_chars=265),
    notes="Flickr30k images are given out after a request form (Flickr terms of use)",
    sources=(  # the manual one first: nothing is downloaded before the user is told what to fetch
        Source("flickr30k-images.tar.gz", (), extract=True,
               manual="Flickr30k's images are given out by its authors after a request form "
                      "(https://shannon.cs.illinois.edu/DenotationGraph/): put flickr30k-images.tar.gz and "
                      "caption_datasets.zip (Karpathy's splits) in a folder and run "
                      "`cpbench prepare flickr30k --from FOLDER`"),
        Source("caption_datasets.zip", (_KARPATHY, _KARPATHY.replace("https:", "http:")), extract=True,
               members=("dataset_flickr30k.json",)),
    ),
    expected=Expected(train=29000, test=1000),
)

MSCOCO = DatasetSpec(
    name="mscoco", dassl_name="mscoco", folder="mscoco", image_dir="", template="{}", task="retrieval",
    read_split=partial(caption_splits.read_karpathy, annotations="dataset_coco.json", pool="val", strip=True),
    sources=(
        Source("caption_datasets.zip", (_KARPATHY, _KARPATHY.replace("https:", "http:")), extract=True,
               members=("dataset_coco.json",)),
        Source("val2014.zip", ("http://images.cocodataset.org/zips/val2014.zip",), extract=True),
    ),
    expected=Expected(train=5000, test=5000),
)

CAPTIONED = (FLICKR30K, MSCOCO)
