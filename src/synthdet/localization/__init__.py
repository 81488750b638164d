"""Task B, manipulation localization: the localizer networks and their card, the map → image decision, the
localization metrics, and the generator of (image, mask) triples with the latent autoencoder it uses."""
