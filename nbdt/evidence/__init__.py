"""Evidence for decisions: saliency maps, node examples and the faithfulness test."""
