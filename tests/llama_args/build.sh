#!/usr/bin/env bash
# Builds the llama-server argument harness (main.cpp): llama.cpp's common/arg.cpp and the parts of common/ it
# runs, compiled unchanged from the vendored source, linked with the installed llama-cpp-python's libllama and
# libggml (the same library ggtool drives). usage: build.sh PYTHON OUTPUT
set -euo pipefail
py=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
src=$("$py" "$here/../../ggtool/llama/source.py")
lib=$("$py" -c 'import os, llama_cpp; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')
obj=$(dirname "$out")/obj
mkdir -p "$obj"
sed -e 's/@LLAMA_BUILD_NUMBER@/0/' -e 's/@LLAMA_BUILD_COMMIT@/llama-cpp-python-vendored/' \
    -e 's/@BUILD_COMPILER@/c++/' -e 's/@BUILD_TARGET@/ggtool-harness/' \
    "$src/common/build-info.cpp.in" > "$obj/build-info.cpp"
flags=(-std=c++17 -O0 -ffunction-sections -fdata-sections -I"$src/common" -I"$src/include" -I"$src/ggml/include"
       -I"$src/vendor")
units=("$src"/common/{arg,common,log,sampling,speculative,json}.cpp "$obj/build-info.cpp" "$here/stubs.cpp"
       "$here/main.cpp")
# two at a time (the machines have 2 cores); each object is rebuilt only when missing
printf '%s\n' "${units[@]}" | xargs -P 2 -I{} sh -c 'o="$1/$(basename "$2" .cpp).o"; s=$2; shift 2
    [ -f "$o" ] && [ "$o" -nt "$s" ] || ${CXX:-c++} "$@" -c "$s" -o "$o"' _ "$obj" {} "${flags[@]}"
${CXX:-c++} -o "$out.partial" "$obj"/{arg,common,log,sampling,speculative,json,build-info,stubs,main}.o \
    -Wl,--gc-sections -L"$lib" -lllama -lggml -lggml-base -Wl,-rpath,"$lib"
mv "$out.partial" "$out"
