terraform {
  # Built-in resources only (terraform_data + local-exec): no provider to download.
  required_version = ">= 1.6.0"
}
