"""The two trainers, each a self-contained script run under the deepspeed launcher:

deepspeed --num_gpus 2 --module vtt.trainers.llava --config jobs/tiny-llava.yaml
deepspeed --num_gpus 2 --module vtt.trainers.seq2seq --config jobs/tiny-seq2seq.yaml
"""
