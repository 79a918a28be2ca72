"""Lightning glue: pretraining, oracle training, decoding in predict_step, result writers, CLIs."""
