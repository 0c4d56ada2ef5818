"""Explain a photo with the offline ImageNet example, decision by decision.

efficientnet_lite0 with real ImageNet weights, read through the shipped induced ImageNet hierarchy
with "marginal" rules (the network was not fine-tuned with tree supervision, and marginal rules
keep its own predictions). Usage: ``python examples/explain_photo.py [IMAGE]``; without an image
it explains scikit-image's cat photo, chelsea.
"""

import sys

from PIL import Image

import nbdt
from nbdt.pretrained import efficientnet_lite0, shipped_hierarchy


def main() -> None:
    if len(sys.argv) > 1:
        image = sys.argv[1]
    else:
        import skimage.data

        image = Image.fromarray(skimage.data.chelsea())
    hierarchy = shipped_hierarchy("imagenet-induced")
    model = nbdt.NBDT(efficientnet_lite0(), hierarchy, mode="soft", node_score="marginal")
    explanation = model.explain(image, top_k=3)
    print(explanation)
    for step in explanation.path:
        print(
            f"  at {step.display!r}: {step.child_display!r} {step.probability:.1%}"
            f" (runner-up {step.runner_up_display!r} {step.runner_up_probability:.1%},"
            f" entropy {step.entropy:.2f} nats)"
        )
    top = ", ".join(f"{c.label} {c.probability:.1%}" for c in explanation.top_k)
    print(f"top-3 classes: {top}")


if __name__ == "__main__":
    main()
