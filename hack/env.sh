# Puts the toolchains berth builds with on PATH: rustup's cargo and Go.
# Source it: . hack/env.sh
if [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi
case ":$PATH:" in
    *:/usr/local/go/bin:*) ;;
    *) [ -d /usr/local/go/bin ] && PATH="$PATH:/usr/local/go/bin" ;;
esac
case ":$PATH:" in
    *:/usr/local/bin:*) ;;
    *) PATH="/usr/local/bin:$PATH" ;;
esac
export PATH
