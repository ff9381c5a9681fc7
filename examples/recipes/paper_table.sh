#!/usr/bin/env bash
# Reproduce one of the HypLoRA paper's tables on GPUs: LoRA vs HypLoRA, same alpha, same recipe.
#
#   TABLE=arithmetic  TRAIN_DATA=/data/math_10k.json         bash examples/recipes/paper_table.sh
#   TABLE=commonsense TRAIN_DATA=/data/commonsense_170k.json HELLASWAG=/data/hellaswag/test.json \
#       bash examples/recipes/paper_table.sh llama3-8b
#
# Arguments: model keys (default: all three of llama3-8b gemma3-4b qwen2.5-7b).
# Environment:
#   TABLE       arithmetic (paper Table 3) or commonsense (Table 4)
#   TRAIN_DATA  the training file, not shipped with hyplora: LLM-Adapters' ft-training_set/
#               math_10k.json or commonsense_170k.json (see examples/README.md)
#   HELLASWAG   commonsense only: LLM-Adapters' dataset/hellaswag/test.json (not shipped)
#   NPROC       GPUs on this node (default: all visible); the global batch stays 16
#   METHODS     default "lora hyplora"; add dora for the DoRA row
#   ALPHA       default 64 for every method (the reference scripts used 128-256 for HypLoRA:
#               pass ALPHA=128 METHODS=hyplora to repeat that setting)
#   OUT         default runs/<table>
# Each run trains with `hyplora train` under torchrun (DDP), resumes itself if re-launched after an
# interruption, then evaluates in `paper` mode (LLM-Adapters protocol: 4 beams, first/last-number
# rules). For FSDP2 replace the torchrun prefix with
#   accelerate launch --config_file examples/recipes/accelerate_fsdp2.yaml --num_processes "$NPROC" -m hyplora.cli
set -euo pipefail

TABLE=${TABLE:-arithmetic}
: "${TRAIN_DATA:?set TRAIN_DATA to math_10k.json or commonsense_170k.json (see examples/README.md)}"
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
METHODS=${METHODS:-"lora hyplora"}
ALPHA=${ALPHA:-64}
OUT=${OUT:-runs/$TABLE}

declare -A MODEL=(
  [llama3-8b]=meta-llama/Meta-Llama-3-8B-Instruct
  [gemma3-4b]=google/gemma-3-4b-it
  [qwen2.5-7b]=Qwen/Qwen2.5-7B-Instruct-1M
)
# Gemma 3 4B is multimodal: its SigLIP vision tower also has q/k/v_proj layers, which text-only
# data never reaches (DDP would stop on their missing gradients). Adapt the language model only.
declare -A TARGETS=(
  [llama3-8b]=q_proj,k_proj,v_proj,up_proj,down_proj
  [gemma3-4b]='.*language_model.*\.(q_proj|k_proj|v_proj|up_proj|down_proj)'
  [qwen2.5-7b]=q_proj,k_proj,v_proj,up_proj,down_proj
)

case $TABLE in
  arithmetic)
    EVAL_SETS=gsm8k,svamp,aqua,mawps
    SAVE_STEPS=200 ;;
  commonsense)
    : "${HELLASWAG:?set HELLASWAG to the LLM-Adapters file dataset/hellaswag/test.json (not shipped)}"
    EVAL_SETS=boolq,piqa,siqa,$HELLASWAG,winogrande,arc-e,arc-c,obqa
    SAVE_STEPS=80 ;;  # the reference scripts evaluate and save every 80 steps on Commonsense170K
  *) echo "TABLE must be arithmetic or commonsense, not $TABLE" >&2; exit 2 ;;
esac

MICRO=$(( 16 / NPROC < 4 ? 16 / NPROC : 4 ))  # global batch 16 = MICRO x NPROC x accumulation
if (( MICRO < 1 || 16 % (MICRO * NPROC) )); then echo "NPROC must be 1, 2, 4, 8 or 16" >&2; exit 2; fi

keys=("$@")
(( ${#keys[@]} )) || keys=(llama3-8b gemma3-4b qwen2.5-7b)
for key in "${keys[@]}"; do
  [[ -n ${MODEL[$key]:-} ]] || { echo "unknown model key $key (choose: ${!MODEL[*]})" >&2; exit 2; }
  for method in $METHODS; do
    run=$OUT/$key-$method
    resume=()
    if compgen -G "$run/checkpoint-*/trainer_state.json" > /dev/null; then resume=(--resume); fi
    if [[ ! -f $run/adapter_model.safetensors ]]; then
      torchrun --standalone --nproc_per_node "$NPROC" -m hyplora.cli train \
        --model "${MODEL[$key]}" --method "$method" --data "$TRAIN_DATA" \
        --target-modules "${TARGETS[$key]}" \
        --rank 32 --alpha "$ALPHA" --dropout 0.05 \
        --epochs 3 --lr 3e-4 --batch-size 16 --micro-batch-size "$MICRO" \
        --cutoff-len 256 --warmup-steps 100 --val-size 120 \
        --save-steps "$SAVE_STEPS" --precision bf16 --seed 42 \
        --output-dir "$run" "${resume[@]}"
    fi
    hyplora eval --model "${MODEL[$key]}" --adapter "$run" --datasets "$EVAL_SETS" \
      --mode paper --batch-size 16 --dtype bfloat16 --output-dir "$run/eval"
  done
done
