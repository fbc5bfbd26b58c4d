"""GPU benchmarks of scao_dist against the anchors (AdamW, Muon, FlashAdamW, heavyball SOAP, scao 0.2.4)."""
