terraform {
  # Provider-free on purpose: everything here is templatefile/yamlencode, so
  # `terraform test` runs it on any machine, with no plugin to download.
  required_version = ">= 1.6.0"
}
