# Not a broker: Debian's headless Chromium and its chromedriver, which tests/test_dashboard.py
# drives (through selenium) to use the web dashboard as a person would. Installed here so CI
# gets them from `scripts/brokers up` like every service the tests need; no URL to serve.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
case "${1:-up}" in
  up|restart)
    apt_install chromium chromium-driver
    log "chromium $(chromium --version 2>/dev/null | awk '{print $2}') and chromedriver ready"
    ;;
  urls) ;;
esac
