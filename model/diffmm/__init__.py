"""DiffMM (Jiang et al., "DiffMM: Multi-Modal Diffusion Model for Recommendation", 2024) behind the model
contract: per-modality diffusion on each user's interaction row, a per-epoch generated user-item graph per
modality, a modality-aware GCN with fused modal embeddings, contrastive and BPR losses (``recommender``)."""
