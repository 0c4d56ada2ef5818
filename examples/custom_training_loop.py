"""NBDT in your own PyTorch training loop: three steps, on a tiny synthetic dataset.

1. build the hierarchy from the model's classifier weights;
2. wrap your criterion with the tree-supervision loss;
3. wrap the model for inference: class log-probabilities and a decision path per image.
"""

import timm
import torch

import nbdt

torch.manual_seed(0)
classes = ["cat", "dog", "horse", "car", "truck", "ship"]
# A toy dataset: each class is a noisy image of its own colour.
colours = torch.rand(len(classes), 3, 1, 1) * 4 - 2
labels = torch.arange(len(classes)).repeat(32)
images = colours[labels] + 0.5 * torch.randn(len(labels), 3, 32, 32)

# timm's test-sized ResNet keeps this fast; any timm architecture works the same way.
model = timm.create_model("test_resnet", num_classes=len(classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)


def train(criterion: torch.nn.Module, steps: int) -> float:
    """A plain loop: whatever criterion it is given, the code stays the same."""
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(labels), (32,))
        loss = criterion(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


# A pretrained model's head already groups similar classes; this one first learns a little.
train(torch.nn.CrossEntropyLoss(), steps=15)

# 1. The hierarchy, induced from the classifier weights and named with WordNet.
hierarchy = nbdt.Hierarchy.induced(model, classes)
print(hierarchy)

# 2. The criterion, wrapped: cross-entropy plus the soft tree-supervision term.
criterion = nbdt.SoftTreeSupLoss(hierarchy, criterion=torch.nn.CrossEntropyLoss())
print(f"tree-supervised loss after training: {train(criterion, steps=25):.3f}")

# 3. The model, wrapped for inference.
tree_model = nbdt.NBDT(model, hierarchy, mode="soft").eval()
with torch.no_grad():
    accuracy = (tree_model(images).argmax(1) == labels).float().mean().item()
print(f"NBDT accuracy on the training images: {accuracy:.0%}")
print(tree_model.explain(images[0]))
